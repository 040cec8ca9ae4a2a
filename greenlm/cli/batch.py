"""`greenlm batch run`: a Batch API input file run offline when the grid is cleanest before a deadline, on
the same engines and planner as `greenlm serve`; `--dry-run` prints the plan and its expected carbon."""

from __future__ import annotations

import typer
from rich.table import Table

from greenlm.cli import options
from greenlm.cli.app import app
from greenlm.cli.common import LazyProgress, emit_json, err, fmt, note, out
from greenlm.serve.batch_config import BatchRunConfig

batch_app = typer.Typer(
    no_args_is_help=True, help="OpenAI Batch API files run offline when the grid is clean (see `batch run`)."
)
app.add_typer(batch_app, name="batch")
_D = BatchRunConfig


@batch_app.command("run")
@options.energy_options
def run(
    input_file: str = typer.Argument(..., metavar="IN.jsonl", help="Batch API input: one request per line."),
    out_file: str | None = typer.Option(
        None, "--out", "-o", help="Results (JSONL, OpenAI's result lines, input order)."
    ),
    deadline: str = typer.Option(
        _D.deadline, "--deadline", help="Everything done within this (grid clock): 8h, 90m."
    ),
    model: str | None = typer.Option(
        None, "--model", "-m", help="Built-in name, .gguf, HF or variant directory."
    ),
    engine: str | None = typer.Option(None, "--engine", help="llamacpp or transformers (default: as saved)."),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads (default: as saved)."),
    device: options.DeviceFlag = _D.device,
    max_batch: int = typer.Option(
        _D.max_batch, "--max-batch", help="Requests decoded together (a full batch)."
    ),
    context: int = typer.Option(
        _D.context_tokens, "--context", help="Tokens per request, prompt and output."
    ),
    served_model_name: str | None = typer.Option(
        None,
        "--served-model-name",
        help="The model the requests must name (default: the one the file names).",
    ),
    grid_csv: str | None = options.GridCsvOpt,
    replay_speed: float = options.ReplaySpeedOpt,
    replay_from: str | None = options.ReplayFromOpt,
    grid: str | None = options.GridOpt,
    forecast: str = options.ForecastOpt,
    grid_url: str | None = options.GridUrlOpt,
    energy: options.EnergyFlags = options.EnergyOpts,
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the plan and its expected carbon; answer nothing."
    ),
    force: bool = typer.Option(False, "--force", help="Replace --out if it exists."),
    as_json: bool = options.JsonOpt,
) -> None:
    """Run a Batch API file by its deadline, in the cleanest hours the grid forecast shows."""
    from greenlm.serve.offline import run_batch

    config = BatchRunConfig(
        input=input_file, out=out_file or "", deadline=deadline, model=model, engine=engine, threads=threads,
        device=device, max_batch=max_batch, context_tokens=context, served_model_name=served_model_name,
        dry_run=dry_run, force=force,
        grid_csv=grid_csv, replay_speed=replay_speed, replay_from=replay_from, grid_provider=grid,
        forecast=forecast, grid_url=grid_url, energy=energy,
    )  # fmt: skip
    with LazyProgress("requests") as bar:
        result = run_batch(config, progress=bar, announce=note)
    if as_json:
        emit_json(result)
    elif dry_run:
        _print_plan(result)
    else:
        _print_run(result)
    if not dry_run and result["status"] != "completed":
        # a script running the file must not take an expired or cancelled batch for a finished one
        c = result["requests"]
        err.print(
            f"error: the batch {result['status']} with {c['total'] - c['completed']} of {c['total']} requests "
            f"unanswered (their error lines are in {result['out']})"
            + (": give a later --deadline" if result["status"] == "expired" else ""),
            markup=False,
            soft_wrap=True,
        )
        raise typer.Exit(1)


def _print_plan(r: dict) -> None:
    table = Table(
        title=f"plan: {r['requests']} requests, at most {fmt(r['work_tokens_at_most'])} tokens, by {r['deadline']} (grid clock)"
    )
    for col in ("from", "to", "g/kWh", "tokens"):
        table.add_column(col, justify="right" if col in ("g/kWh", "tokens") else "left")
    for s in r["plan"]:
        table.add_row(s["start"], s["end"], f"{s['intensity_g_per_kwh']:.0f}", fmt(s["tokens"]))
    out.print(table)
    p = r["probe"]
    source = "ESTIMATED by a model" if p["energy_source"] == "estimated" else "measured"
    for line in (
        f"forecast: {r['forecast']['source']}"
        + (" (the deadline is beyond it: its last value held)" if r["forecast"]["beyond_horizon"] else ""),
        f"throughput {fmt(p['capacity_tokens_per_s'])} tokens/s and {fmt(p['j_per_token'])} J/token on a probe of "
        f"{p['requests']} requests (meter {p['meter']}, {source}; their answers discarded)",
        f"expected: {fmt(r['expected_energy_j'])} J, {fmt(r['expected_carbon_g'])} gCO2e vs {fmt(r['expected_carbon_if_run_now_g'])} g "
        f"run now ({r['expected_saving_pct']:.1f}% less)"
        + ("; it cannot all fit before the deadline" if r["late"] else ""),
    ):
        out.print(line, markup=False, soft_wrap=True)


def _print_run(r: dict) -> None:
    c = r["requests"]
    source = "ESTIMATED by a model" if r["energy_source"] == "estimated" else "measured"
    for line in (
        f"{r['status']}: {c['completed']} of {c['total']} requests answered, {c['failed']} failed; results in {r['out']}",
        f"energy {fmt(r['energy_j'])} J (meter {r['meter']}, {source}); carbon {fmt(r['carbon_g'])} g vs "
        f"{fmt(r['carbon_if_run_at_submission_g'])} g at the intensity of its start "
        f"({r['intensity_at_submission_g_per_kwh']:.0f} g/kWh); {r['decisions']} planner decisions",
    ):
        out.print(line, markup=False, soft_wrap=True)
