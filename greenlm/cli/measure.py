"""`greenlm measure`: energy, speed and carbon per token of a model on a generation workload."""

from __future__ import annotations

import typer
from rich.table import Table

from greenlm.cli import options
from greenlm.cli.app import app
from greenlm.cli.common import LazyProgress, emit_json, fmt, note, out
from greenlm.workload.config import MeasureConfig


@app.command()
@options.energy_options
def measure(
    model: str | None = options.ModelOpt,
    engine: str | None = typer.Option(
        options.default(MeasureConfig, "engine"),
        "--engine",
        help="transformers or llamacpp (see `greenlm engines`); default: as `optimize --out` saved the model, "
        "else transformers.",
    ),
    text: str | None = typer.Option(
        None, "--text", help=".txt or .jsonl text; prompts come from its evaluation split."
    ),
    prompts: str | None = typer.Option(
        None, "--prompts", help=".jsonl ({'prompt': ...} per line) or .txt (one per line)."
    ),
    num_prompts: int = typer.Option(
        options.default(MeasureConfig, "num_prompts"),
        "--num-prompts",
        help="Prompts cut from the evaluation text (ignored with --prompts).",
    ),
    prompt_tokens: int = typer.Option(
        options.default(MeasureConfig, "prompt_tokens"),
        "--prompt-tokens",
        help="Length of each generated prompt in tokens.",
    ),
    batch_size: int = typer.Option(
        options.default(MeasureConfig, "batch_size"), "--batch-size", help="Sequences per forward pass."
    ),
    max_new_tokens: int = typer.Option(
        options.default(MeasureConfig, "max_new_tokens"),
        "--max-new-tokens",
        help="Tokens generated per prompt (end-of-text ignored).",
    ),
    repeats: int = typer.Option(
        options.default(MeasureConfig, "repeats"),
        "--repeats",
        help="Measured passes over all prompts; median and spread reported.",
    ),
    threads: int | None = typer.Option(
        None, "--threads", help="CPU threads (default: torch's choice; llamacpp: the cores available)."
    ),
    device: options.DeviceFlag = options.default(MeasureConfig, "device"),
    energy: options.EnergyFlags = options.EnergyOpts,
    speculative: str | None = typer.Option(
        None,
        "--speculative",
        help="llamacpp: speculative greedy decoding, prompt-lookup or draft (same output, fewer passes).",
    ),
    draft_tokens: int | None = typer.Option(
        None, "--draft-tokens", help="Tokens drafted per verify pass, 1-16 (default 4)."
    ),
    draft_model: str | None = typer.Option(
        None, "--draft-model", help="--speculative draft: a smaller .gguf with the same tokenizer."
    ),
    ngram_min: int | None = typer.Option(
        None, "--ngram-min", help="prompt-lookup: shortest n-gram matched (default 1)."
    ),
    ngram_max: int | None = typer.Option(
        None, "--ngram-max", help="prompt-lookup: longest n-gram, tried first (default 3)."
    ),
    db: str | None = options.DbOpt,
    as_json: bool = options.JsonOpt,
) -> None:
    """Measure energy, speed and carbon per token of a model on a generation workload."""
    from greenlm.engines.speculative import speculative_from_flags
    from greenlm.store import Store
    from greenlm.workload.runner import run_measure

    config = MeasureConfig(
        model=model,
        engine=engine,
        text=text,
        prompts=prompts,
        num_prompts=num_prompts,
        prompt_tokens=prompt_tokens,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        repeats=repeats,
        threads=threads,
        device=device,
        energy=energy,
        speculative=speculative_from_flags(
            speculative,
            draft_tokens=draft_tokens,
            draft_model=draft_model,
            ngram_min=ngram_min,
            ngram_max=ngram_max,
        ),
    )
    with Store(db) as store, LazyProgress("measuring") as bar:
        result = run_measure(config, store=store, announce=note, progress=bar)
    record = result.to_dict()
    if as_json:
        emit_json(record)
        return
    _print_measurement(record)


def _print_measurement(r: dict) -> None:
    table = Table(
        title=f"{r['model']} on {r['engine']} ({r['device']}, {r['threads']} threads, batch {r['batch_size']})"
    )
    table.add_column("metric")
    table.add_column("median", justify="right")
    table.add_column("min – max", justify="right")
    rows = [
        ("prefill tokens/s", "prefill_tokens_per_s"),
        ("decode tokens/s", "decode_tokens_per_s"),
        ("TTFT (s)", "ttft_s"),
        ("time per output token (s)", "tpot_s"),
        ("prefill J/token", "prefill_j_per_token"),
        ("decode J/token", "decode_j_per_token"),
        ("tokens per J", "tokens_per_j"),
        ("gCO2e per 1k tokens", "carbon_g_per_1k_tokens"),
    ]
    for label, key in rows:
        spread = r["spread"][key]
        table.add_row(label, fmt(r[key]), f"{fmt(spread['min'])} – {fmt(spread['max'])}")
    out.print(table)
    source = (
        "ESTIMATED by a model, not a hardware counter"
        if r["energy_source"] == "estimated"
        else "measured by hardware counters"
    )
    lines = [
        f"energy: meter {r['meter']} ({source})",
        *_energy_lines(r),
        f"carbon: {r['intensity_g_per_kwh']:g} gCO2e/kWh ({r['intensity_source']}), PUE {r['pue']:g}",
        f"workload: {r['num_prompts']} prompts of ~{r['mean_prompt_tokens']:.0f} tokens from {r['text']}, "
        f"{r['max_new_tokens']} new tokens each, {r['repeats']} repeats; peak RSS {r['peak_rss_mb']:.0f} MB",
        f"model load: {r['load_s']:.2f} s ({r['load_source']})",
        *_speculative_lines(r),
        f"stored as run {r['run_id']}",
    ]
    for line in lines:
        out.print(line, markup=False)


def _energy_lines(r: dict) -> list[str]:
    """Where each additive domain's energy came from, and the CPU estimate's static/dynamic split."""
    lines = []
    domains = r.get("energy_domains") or {}
    additive = {d: v for d, v in domains.items() if v["additive"]}
    if len({(v["meter"], v["energy_source"]) for v in additive.values()}) > 1:
        lines.append(
            "  domains: "
            + "; ".join(
                f"{d} {v['meter']} ({v['energy_source']}) {fmt(v['decode_j_per_token'])} J/decode token"
                for d, v in additive.items()
            )
        )
    for phase in ("prefill", "decode"):
        static, dynamic = r.get(f"{phase}_static_j_per_token"), r.get(f"{phase}_dynamic_j_per_token")
        if static is not None and dynamic is not None:
            lines.append(
                f"  {phase} J/token of the CPU estimate: static {fmt(static)} (cores held for the wall time) "
                f"+ dynamic {fmt(dynamic)} (busy core-seconds)"
            )
    return lines


def _speculative_lines(r: dict) -> list[str]:
    spec = r.get("speculative")
    if not spec:
        return []
    how = (
        f"n-grams {spec['ngram_min']}-{spec['ngram_max']}"
        if spec["kind"] == "prompt-lookup"
        else f"draft model {spec['draft_gguf']} ({spec['draft_quant_type']}, {spec['draft_file_mb']:.0f} MB)"
    )
    rate = r["acceptance_rate"]
    accepted = (
        "nothing was drafted (no match / no proposal)"
        if rate is None
        else f"{spec['accepted_tokens']} of {spec['drafted_tokens']} drafted tokens accepted ({rate:.0%})"
    )
    per_pass = spec["decode_tokens_per_target_pass"]
    passes = "" if per_pass is None else f", {per_pass:.2f} decode tokens per target pass"
    return [
        f"speculative: {spec['kind']}, {spec['draft_tokens']} draft tokens, {how}; {accepted}{passes}; "
        "output identical to greedy decoding; draft work is inside the decode energy"
    ]
