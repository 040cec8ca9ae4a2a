"""`greenlm eval`: perplexity on held-out text, and KLD and top-1 agreement against a reference model."""

from __future__ import annotations

import typer
from rich.table import Table

from greenlm.cli import options
from greenlm.cli.app import app
from greenlm.cli.common import LazyProgress, emit_json, fmt, note, out
from greenlm.evaluate.config import EvalConfig


@app.command(name="eval")
def eval_command(
    model: str | None = typer.Option(
        None,
        "--model",
        "-m",
        help="Built-in name, HF directory, variant directory or .gguf (default smollm2-135m).",
    ),
    reference: str | None = typer.Option(
        None, "--reference", "-r", help="Reference model for KLD and top-1 (default: a variant's parent)."
    ),
    no_reference: bool = typer.Option(
        False, "--no-reference", help="Perplexity only, even for a variant with a parent."
    ),
    text: str | None = typer.Option(
        None, "--text", help=".txt or .jsonl text; only its evaluation split is read."
    ),
    engine: str | None = typer.Option(
        options.default(EvalConfig, "engine"),
        "--engine",
        help="Engine that runs the model; default: as `optimize --out` saved it, else transformers.",
    ),
    reference_engine: str = typer.Option(
        options.default(EvalConfig, "reference_engine"),
        "--reference-engine",
        help="Engine that runs the reference (float32).",
    ),
    window_tokens: int = typer.Option(
        options.default(EvalConfig, "window_tokens"),
        "--window-tokens",
        help="Tokens per window (non-overlapping).",
    ),
    max_eval_tokens: int = typer.Option(
        options.default(EvalConfig, "max_eval_tokens"),
        "--max-eval-tokens",
        help="Tokens fed to each model, in windows spread through the text; 0 = the whole split.",
    ),
    top_k: int = typer.Option(
        options.default(EvalConfig, "top_k"),
        "--top-k",
        help="Reference tokens kept per position for the KLD.",
    ),
    tail_samples: int = typer.Option(
        options.default(EvalConfig, "tail_samples"),
        "--tail-samples",
        help="Reference tail tokens sampled per position for the KLD.",
    ),
    batch_windows: int = typer.Option(
        options.default(EvalConfig, "batch_windows"), "--batch-windows", help="Windows per forward pass."
    ),
    threads: int | None = options.TorchThreadsOpt,
    device: options.DeviceFlag = options.default(EvalConfig, "device"),
    dtype: str = typer.Option(
        options.default(EvalConfig, "dtype"), "--dtype", help="Model dtype: float32, bfloat16 or float16."
    ),
    no_cache: bool = typer.Option(
        False, "--no-cache", help="Recompute cached statistics (and rewrite the cache)."
    ),
    db: str | None = options.DbOpt,
    as_json: bool = options.JsonOpt,
) -> None:
    """Perplexity on the evaluation split; with a reference, also KL divergence and top-1 agreement."""
    from greenlm.evaluate.runner import evaluate
    from greenlm.store import Store

    config = EvalConfig(
        model=model,
        reference=reference,
        use_parent_reference=not no_reference,
        text=text,
        engine=engine,
        reference_engine=reference_engine,
        threads=threads,
        device=device,
        dtype=dtype,
        window_tokens=window_tokens,
        max_eval_tokens=max_eval_tokens,
        top_k=top_k,
        tail_samples=tail_samples,
        batch_windows=batch_windows,
        use_cache=not no_cache,
    )
    with Store(db) as store, LazyProgress("evaluating windows") as bar:
        result = evaluate(config, store=store, progress=bar, announce=note)
    record = result.to_dict()
    if as_json:
        emit_json(record)
        return
    _print_eval(record)


def _print_eval(r: dict) -> None:
    title = f"{r['model']} on {r['engine']}" + (f" vs reference {r['reference']}" if r["reference"] else "")
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("± std. error", justify="right")

    def se(value):
        return fmt(value) if value is not None else ""

    table.add_row("perplexity", fmt(r["ppl"]), se(r["nll_stderr"] and r["ppl"] * r["nll_stderr"]))
    if r["reference"]:
        table.add_row("reference perplexity", fmt(r["ppl_reference"]), "")
        table.add_row(
            "perplexity increase %", f"{r['ppl_increase_pct']:+.2f}", se(r["ppl_increase_pct_stderr"])
        )
        table.add_row("KL divergence (full-vocabulary estimate)", fmt(r["kld"]), se(r["kld_stderr"]))
        table.add_row(f"KLD lower bound (top-{r['top_k']} + rest)", fmt(r["kld_lower_bound"]), "")
        table.add_row("KLD 99th percentile", fmt(r["kld_p99"]), "")
        table.add_row("top-1 agreement", f"{r['top1_agreement']:.4f}", "")
    out.print(table)
    lines = [
        f"text: {r['text']}, {r['windows']} windows of {r['window_tokens']} tokens spread through its "
        f"{r['text_tokens']} tokens; {r['tokens_evaluated']} next-token predictions scored",
    ]
    if r["reference"]:
        source = "from the cache" if r["reference_cached"] else "computed now and cached"
        lines.append(
            f"reference statistics {source} ({r['reference_s']:.1f} s); the reference's top-{r['top_k']} tokens "
            f"hold {r['ref_topk_mass'] * 100:.2f}% of its probability on average (min {r['ref_topk_mass_min'] * 100:.1f}%)"
        )
    elif r["model_cached"]:
        lines.append("statistics from the cache: the model was not run again (--no-cache recomputes)")
    if r["model_cached"]:
        lines.append(f"wall time {r['wall_s']:.2f} s")
    else:
        speed = f", {r['eval_tokens_per_s']:.0f} tokens/s" if r.get("eval_tokens_per_s") else ""
        lines.append(f"wall time {r['wall_s']:.1f} s (model pass {r['eval_s']:.1f} s{speed})")
    if r.get("execution"):
        lines.append(f"variant execution: {r['execution']}")
    if r.get("payback"):
        lines.append(f"payback: {r['payback']['message']}")
    lines.append(f"stored as run {r['run_id']}")
    for line in lines:
        out.print(line, markup=False)
