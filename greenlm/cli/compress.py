"""`greenlm compress`: apply a recipe (or one step given by flags) to a model and save the variant directory."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from greenlm.cli.app import app
from greenlm.cli.common import DbOpt, JsonOpt, emit_json, err, fmt, note, out
from greenlm.compress.pipeline import DEFAULT_EVAL_TOKENS
from greenlm.errors import GreenlmError


class StepProgress:
    """One transient bar on stderr whose label follows the phase (calibrating, step 2/3: gptq, ...)."""

    def __init__(self) -> None:
        self._bar: Progress | None = None
        self._task = None

    def __call__(self, label: str, done: int, total: int) -> None:
        if self._bar is None:
            self._bar = Progress(
                TextColumn("[progress.description]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=err,
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task(label, total=total)
        self._bar.update(self._task, description=label, completed=done, total=total)

    def __enter__(self) -> StepProgress:
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()


def _parse_option(text: str):
    """`KEY=VALUE` with VALUE read as YAML (numbers, true/false, [lists])."""
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise GreenlmError(f"--option '{text}' must look like KEY=VALUE, e.g. --option damp=0.01")
    try:
        return key.strip(), yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        return key.strip(), value


def step_from_flags(method: str, flags: dict, options: list[str]) -> dict:
    """The step mapping for `--method` and its flags: each generic flag must be a setting of that method."""
    from dataclasses import fields

    from greenlm.compress import config_class, method_names
    from greenlm.compress.recipe import parse_step

    if method not in method_names():
        parse_step({"method": method}, f"--method {method}")  # raises with a did-you-mean
    known = {f.name for f in fields(config_class(method))}
    step: dict = {"method": method}
    for flag, (setting, value) in flags.items():
        if value is None:
            continue
        targets = setting if isinstance(setting, tuple) else (setting,)
        missing = [t for t in targets if t not in known]
        if missing:
            raise GreenlmError(
                f"{flag} does not apply to method '{method}': its settings are {', '.join(sorted(known)) or 'none'}"
            )
        if isinstance(setting, tuple):
            step.update(zip(setting, value, strict=True))
        else:
            step[setting] = value
    for text in options:
        key, value = _parse_option(text)
        step[key] = value
    return step


def _pattern(text: str | None):
    if text is None:
        return None
    n, sep, m = text.partition(":")
    if not sep or not n.strip().isdigit() or not m.strip().isdigit():
        raise GreenlmError(f"--pattern must look like N:M (e.g. 2:4), got '{text}'")
    return int(n), int(m)


@app.command()
def compress(
    out_dir: str = typer.Option(..., "--out", "-o", help="Variant directory to create (must not exist)."),
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
    calibration_samples: int = typer.Option(64, "--calibration-samples", help="Calibration windows."),
    calibration_tokens: int = typer.Option(
        256, "--calibration-tokens", help="Tokens per calibration window."
    ),
    eval_tokens: int = typer.Option(
        DEFAULT_EVAL_TOKENS, "--eval-tokens", help="Evaluation tokens for the quality measured at creation."
    ),
    no_eval: bool = typer.Option(False, "--no-eval", help="Skip the quality measurement at creation."),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads (default: torch's choice)."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N or auto."),
    db: str | None = DbOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Compress a model with a recipe (or one --method) and save it as a loadable variant directory."""
    from greenlm.compress.pipeline import CompressConfig
    from greenlm.compress.pipeline import compress as run_compress
    from greenlm.compress.recipe import Recipe, load_recipe, parse_step
    from greenlm.store import Store

    flags = {
        "--bits": ("bits", bits),
        "--group-size": ("group_size", group_size),
        "--symmetric/--asymmetric": ("symmetric", symmetric),
        "--ratio": ("ratio", ratio),
        "--count": ("count", count),
        "--pattern": (("n", "m"), _pattern(pattern)),
        "--skip": ("skip", list(skip) if skip else None),
    }
    if recipe and method:
        raise GreenlmError(
            "--recipe and --method both given: use a recipe file, or one --method with its flags"
        )
    if recipe:
        given = [f for f, (_s, v) in flags.items() if v is not None] + (["--option"] if option else [])
        if given:
            raise GreenlmError(
                f"{given[0]} sets a --method step: with --recipe, put settings in the recipe file"
            )
        parsed = load_recipe(recipe)
    elif method:
        parsed = Recipe(
            steps=[parse_step(step_from_flags(method, flags, list(option or [])), f"--method {method}")]
        )
    else:
        raise GreenlmError(
            "nothing to do: pass --recipe FILE or --method NAME (see `greenlm compress --help`)"
        )
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
        with Store(db) as store, StepProgress() as bar:
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
