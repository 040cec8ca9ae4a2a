"""`greenlm optimize`: find the variant that costs least energy within a quality budget."""

from __future__ import annotations

import typer
from rich.table import Table

from greenlm.cli import options
from greenlm.cli.app import app
from greenlm.cli.common import LazyProgress, emit_json, fmt, note, out
from greenlm.optimize.config import EvalSettings, OptimizeConfig
from greenlm.optimize.pareto import QualityBudget


@app.command()
@options.energy_options
def optimize(
    model: str | None = options.ModelOpt,
    text: str | None = typer.Option(
        None, "--text", help=".txt or .jsonl text for calibration, evaluation and prompts."
    ),
    max_ppl_increase: str = typer.Option(
        f"{QualityBudget.max_ppl_increase_pct:g}%",
        "--max-ppl-increase",
        help="Quality budget: perplexity increase, e.g. 3%.",
    ),
    max_kld: float = typer.Option(
        QualityBudget.max_kld, "--max-kld", help="Quality budget: KL divergence from the reference."
    ),
    time_budget: str = typer.Option(
        f"{options.default(OptimizeConfig, 'time_budget_s') / 60:g}m",
        "--time-budget",
        help="Stop starting candidates after this, e.g. 20m, 1h.",
    ),
    max_candidates: int | None = typer.Option(
        None, "--max-candidates", help="Evaluate at most this many candidates."
    ),
    space: str | None = typer.Option(
        None, "--space", help="Search space YAML (default: the built-in space)."
    ),
    eval_tokens: int = typer.Option(
        options.default(EvalSettings, "eval_tokens"),
        "--eval-tokens",
        help="Held-out tokens for each full quality evaluation.",
    ),
    screen_tokens: int = typer.Option(
        options.default(EvalSettings, "screen_eval_tokens"),
        "--screen-tokens",
        help="Held-out tokens for the cheap KLD screen.",
    ),
    repeats: int = typer.Option(
        options.default(EvalSettings, "repeats"),
        "--repeats",
        help="Energy measurement repeats per candidate.",
    ),
    max_new_tokens: int = typer.Option(
        options.default(EvalSettings, "max_new_tokens"),
        "--max-new-tokens",
        help="Decode tokens per prompt in the energy workload.",
    ),
    energy: options.EnergyFlags = options.EnergyOpts,
    executor: str = typer.Option(
        options.default(OptimizeConfig, "executor"),
        "--executor",
        help="local, or ray (candidates as Ray tasks).",
    ),
    ray_address: str | None = typer.Option(
        None, "--ray-address", help="Ray cluster address, e.g. auto or HOST:6379."
    ),
    ray_cpus_per_task: float = typer.Option(
        options.default(OptimizeConfig, "ray_cpus_per_task"),
        "--ray-cpus-per-task",
        help="CPUs each candidate task asks Ray for.",
    ),
    ray_gpus_per_task: float = typer.Option(
        options.default(OptimizeConfig, "ray_gpus_per_task"),
        "--ray-gpus-per-task",
        help="GPUs each candidate task asks Ray for (e.g. 1 on GPU workers).",
    ),
    out_dir: str | None = typer.Option(None, "--out", help="Save the chosen variant here."),
    device: str = typer.Option(
        options.default(EvalSettings, "device"),
        "--device",
        help="auto, cpu, cuda or cuda:N for every candidate.",
    ),
    final_rounds: int = typer.Option(
        options.default(OptimizeConfig, "final_rounds"),
        "--final-rounds",
        help="Interleaved re-measurement rounds of the best 3 candidates and the baselines (0: none).",
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the latest interrupted search for this model."
    ),
    search_id: str | None = typer.Option(
        None, "--search-id", help="Name the search (or pick one to resume)."
    ),
    db: str | None = options.DbOpt,
    as_json: bool = options.JsonOpt,
) -> None:
    """Search compression recipes and engines for the least decode J/token inside a quality budget."""
    from greenlm.optimize.config import parse_duration_s, parse_percent
    from greenlm.optimize.search import optimize as run_search
    from greenlm.store import Store

    settings = EvalSettings(
        model=model,
        text=text,
        eval_tokens=eval_tokens,
        screen_eval_tokens=screen_tokens,
        repeats=repeats,
        max_new_tokens=max_new_tokens,
        energy=energy,
        device=device,
        budget=QualityBudget(parse_percent(max_ppl_increase), max_kld),
    )
    config = OptimizeConfig(
        settings=settings,
        space=space,
        time_budget_s=parse_duration_s(time_budget),
        max_candidates=max_candidates,
        executor=executor,
        ray_address=ray_address,
        ray_cpus_per_task=ray_cpus_per_task,
        ray_gpus_per_task=ray_gpus_per_task,
        out=out_dir,
        resume=resume,
        search_id=search_id,
        final_rounds=final_rounds,
    )
    with Store(db) as store, LazyProgress("candidates") as bar:
        result = run_search(config, store=store, progress=bar, announce=note)
    summary = result.to_dict()
    if as_json:
        emit_json(summary)
        return
    _print_summary(summary)


def _print_summary(s: dict) -> None:
    base, natural, best = s["baseline"], s["natural_baseline"], s["chosen"]
    two = natural["key"] != base["key"]
    table = Table(
        title=f"search {s['search_id']}: {s['candidates_evaluated']} candidates, stopped by {s['stopped_by']}"
    )
    table.add_column("")
    table.add_column("baseline (float32 transformers)", justify="right")
    if two:
        table.add_column("model as given", justify="right")
    table.add_column("chosen" if best else "closest miss", justify="right")
    other = best or (s["closest"][0] if s["closest"] else None)
    rows = [
        ("candidate", "label"),
        ("engine", "engine"),
        ("execution", "execution"),
        ("decode J/token", "decode_j_per_token"),
        ("decode tokens/s", "decode_tokens_per_s"),
        ("gCO2e per 1k tokens", "carbon_g_per_1k_tokens"),
        ("PPL", "ppl"),
        ("PPL increase %", "ppl_increase_pct"),
        ("KLD", "kld"),
        ("size MB", "size_mb"),
        ("meter", "meter"),
        ("host", "host"),
    ]

    def show(row: dict | None, key: str) -> str:
        if row is None:
            return ""
        final = row.get("final") or {}
        value = final.get(key, row.get(key))  # the final round's median where there was one
        if value is None:
            return ""
        return value if isinstance(value, str) else fmt(value)

    columns = [base, natural, other] if two else [base, other]
    for label, key in rows:
        table.add_row(label, *(show(r, key) for r in columns))
    out.print(table)
    if s["final_round"]:
        final = Table(title="final round: interleaved re-measurement on this host (decode J/token)")
        for column in ("candidate", "role", "median", "min – max", "tokens/s"):
            final.add_column(column, justify="left" if column in ("candidate", "role") else "right")
        for r in s["final_round"]:
            final.add_row(
                r["label"],
                r["role"],
                fmt(r["decode_j_per_token"]),
                f"{fmt(r['spread']['min'])} – {fmt(r['spread']['max'])}",
                fmt(r["decode_tokens_per_s"]),
            )
        out.print(final)
    front = Table(title="Pareto front: decode J/token against quality loss (measured, real candidates)")
    for column in ("candidate", "decode J/token", "tokens/s", "PPL increase %", "KLD"):
        front.add_column(column, justify="left" if column == "candidate" else "right")
    for r in s["pareto"]:
        front.add_row(
            r["label"],
            show(r, "decode_j_per_token"),
            show(r, "decode_tokens_per_s"),
            show(r, "ppl_increase_pct"),
            show(r, "kld"),
        )
    out.print(front)
    if best and s["comparable"]:
        ratios = f"decode J/token {s['j_per_token_ratio']:.2f}x lower than float32 transformers"
        if two:
            ratios += f", {s['j_per_token_ratio_natural']:.2f}x lower than the model as given"
        out.print(ratios + ", within budget", markup=False)
    elif best:
        out.print(
            "chosen within budget; its ratio to the baselines is not comparable (see notes)", markup=False
        )
    else:
        out.print(
            "no candidate met the quality budget while costing less than the baseline; closest shown",
            markup=False,
        )
    for r in s["pareto"] + ([best] if best and best not in s["pareto"] else []):
        if r.get("training_energy_j"):
            tokens = r.get("payback_tokens")
            repaid = f"repaid after {tokens:,.0f} served tokens" if tokens else "never repaid (no saving)"
            out.print(
                f"payback: {r['label']} spent {r['training_energy_j']:.0f} J training, {repaid} against "
                "float32 transformers",
                markup=False,
            )
    if best and s["variant_dir"]:
        out.print(
            f"chosen variant saved in {s['variant_dir']} with how it ran ({best['engine']}, threads "
            f"{best['threads'] or 'default'}); `greenlm measure --model {s['variant_dir']}` runs it that way",
            markup=False,
        )
    for line in s["notes"]:
        out.print(f"note: {line}", markup=False)
    source = {r["energy_source"] for r in [base, *([best] if best else [])] if r}
    if "estimated" in source:
        out.print(
            "energy figures are ESTIMATED by the cpu-model meter (no hardware counters here)", markup=False
        )
    out.print("`greenlm report --out report.html` draws the Pareto front and the table", markup=False)
