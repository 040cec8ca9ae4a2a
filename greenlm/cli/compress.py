"""`greenlm compress`: apply a recipe (or one step given by flags) to a model and save the variant directory."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from greenlm.cli import options
from greenlm.cli.app import app
from greenlm.cli.common import LazyProgress, emit_json, fmt, note, out
from greenlm.compress.config import CompressConfig


@app.command()
def compress(
    out_dir: str = options.VariantOutOpt,
    recipe: str | None = typer.Option(None, "--recipe", "-r", help="YAML recipe: a 'steps:' list."),
    method: str | None = typer.Option(
        None, "--method", help="One step instead of a recipe: rtn, gptq, awq, wanda, nm, drop_layers, ..."
    ),
    bits: int | None = typer.Option(None, "--bits", help="Quantization bits (rtn, gptq, awq)."),
    group_size: int | None = typer.Option(None, "--group-size", help="Quantization group size."),
    symmetric: bool | None = typer.Option(
        None, "--symmetric/--asymmetric", help="Symmetric or asymmetric quantization grid."
    ),
    ratio: float | None = typer.Option(
        None, "--ratio", help="Fraction removed (magnitude, wanda, prune_channels, prune_heads)."
    ),
    count: int | None = typer.Option(None, "--count", help="Decoder layers to remove (drop_layers)."),
    pattern: str | None = typer.Option(None, "--pattern", help="N:M sparsity pattern, e.g. 2:4 (nm)."),
    skip: list[str] | None = typer.Option(
        None, "--skip", help="Module-name pattern to leave alone (repeatable; replaces the default)."
    ),
    option: list[str] | None = typer.Option(
        None, "--option", help="Any other setting of the method as KEY=VALUE (repeatable)."
    ),
    model: str | None = typer.Option(
        None, "--model", "-m", help="Parent: built-in name, HF directory or .gguf (default smollm2-135m)."
    ),
    text: str | None = typer.Option(
        None,
        "--text",
        help=".txt or .jsonl: calibration from its calibration split, quality from its evaluation split.",
    ),
    calibration_samples: int = typer.Option(
        options.default(CompressConfig, "calibration_samples"),
        "--calibration-samples",
        help="Calibration windows.",
    ),
    calibration_tokens: options.CalibrationTokensFlag = options.default(CompressConfig, "calibration_tokens"),
    eval_tokens: int = typer.Option(
        options.default(CompressConfig, "eval_tokens"),
        "--eval-tokens",
        help="Evaluation tokens for the quality measured at creation.",
    ),
    no_eval: bool = typer.Option(False, "--no-eval", help="Skip the quality measurement at creation."),
    threads: int | None = options.TorchThreadsOpt,
    device: options.TrainDeviceFlag = options.default(CompressConfig, "device"),
    db: str | None = options.DbOpt,
    as_json: bool = options.JsonOpt,
) -> None:
    """Compress a model with a recipe (or one --method) and save it as a loadable variant directory."""
    from greenlm.compress.pipeline import compress as run_compress
    from greenlm.compress.recipe import parse_pattern, recipe_from_flags
    from greenlm.store import Store

    flags = {
        "--bits": ("bits", bits),
        "--group-size": ("group_size", group_size),
        "--symmetric/--asymmetric": ("symmetric", symmetric),
        "--ratio": ("ratio", ratio),
        "--count": ("count", count),
        "--pattern": (("n", "m"), parse_pattern(pattern)),
        "--skip": ("skip", list(skip) if skip else None),
    }
    parsed = recipe_from_flags(recipe, method, flags, list(option or []))
    config = CompressConfig(
        recipe=parsed,
        out=out_dir,
        model=model,
        text=text,
        calibration_samples=calibration_samples,
        calibration_tokens=calibration_tokens,
        evaluate=not no_eval,
        eval_tokens=eval_tokens,
        threads=threads,
        device=device,
    )
    try:
        with Store(db) as store, LazyProgress() as bar:
            result = run_compress(config, store=store, progress=bar, announce=note)
    except KeyboardInterrupt:
        # typer turns a bare KeyboardInterrupt into a silent exit 130; Abort reaches greenlm's main, which
        # says "interrupted" (the variant's temporary directory is already gone: see atomic_directory)
        raise typer.Abort() from None
    record = result.to_dict()
    if as_json:
        emit_json(record)
        return
    _print_result(record)


def _step_summary(step: dict) -> str:
    d = step.get("details") or {}
    parts = []
    for key in ("layers_removed", "intermediate_after", "heads_after", "sparsity", "pattern"):
        if key in d:
            parts.append(f"{key}={d[key]}")
    if "params_before" in d and "params_after" in d:
        parts.append(f"params {d['params_before']:,} → {d['params_after']:,}")
    extra = [
        f"{k}={v}"
        for k, v in d.items()
        if isinstance(v, (int, float, str))
        and k
        not in (
            "layers_removed",
            "intermediate_after",
            "heads_after",
            "sparsity",
            "pattern",
            "params_before",
            "params_after",
            "ranking",
            "calibration_tokens",
        )
    ]
    return ", ".join(parts + extra[:4])


def _print_result(r: dict) -> None:
    table = Table(title=f"variant {r['variant_dir']} ({r['execution']})")
    table.add_column("step")
    table.add_column("execution")
    table.add_column("what changed")
    for step in r["steps"]:
        table.add_row(step["method"], step["execution"], _step_summary(step))
    out.print(table)
    lines = []
    quality = r.get("quality")
    if quality:
        lines.append(
            f"quality vs {quality['reference']} on {quality['text']}: PPL {fmt(r['ppl'])} "
            f"(reference {fmt(r['ppl_reference'])}, {r['ppl_increase_pct']:+.2f}%), KLD {fmt(r['kld'])}, "
            f"top-1 agreement {r['top1_agreement']:.3f}, {r['tokens_evaluated']} tokens ({quality['budget']})"
        )
    else:
        lines.append("quality: not measured (run `greenlm eval --model DIR`)")
    parent_size = r.get("parent_size_bytes")
    size = f"size on disk {r['size_bytes'] / 1e6:.1f} MB"
    if parent_size:
        kind = r["parent"]["kind"]
        form = "GGUF file, loaded as float32" if kind in ("builtin", "gguf") else "directory"
        size += f" (parent {parent_size / 1e6:.1f} MB {form})"
    lines.append(size + f"; {r['architecture']['params']:,} parameters")
    for step in r["steps"]:
        for n in step.get("notes") or []:
            lines.append(f"note ({step['method']}): {n}")
    if r["execution"] == "simulated":
        lines.append("execution: simulated: quality only, not a speed or energy saving")
    else:
        lines.append("execution: real: measure its speed and energy with `greenlm measure --model DIR`")
    lines.append(f"saved to {Path(r['variant_dir'])} in {r['wall_s']:.1f} s; stored as run {r['run_id']}")
    for line in lines:
        out.print(line, markup=False, soft_wrap=True)
