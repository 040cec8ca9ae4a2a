"""The `greenlm` command: one sub-command per verb, each a thin shell over a library function.

Human output is a rich table on stdout; `--json` prints one JSON document instead. Notes, progress and
errors go to stderr so `--json` output stays clean. A user error is one line and exit code 2.
"""

from __future__ import annotations

import importlib
import json
import sys

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from greenlm.errors import GreenlmError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Measure, compress, optimize and serve language models for less energy and carbon.",
)
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

JsonOpt = typer.Option(False, "--json", help="Print one JSON document instead of a table.")
DbOpt = typer.Option(None, "--db", help="Results store (SQLite). Default: the user data dir, or $GREENLM_DB.")


def _emit_json(payload) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")


def _note(message: str) -> None:
    err.print(message, markup=False, style="yellow", soft_wrap=True)


class LazyProgress:
    """A progress bar on stderr that appears with the first update, so an early error prints alone."""

    def __init__(self, description: str):
        self.description = description
        self._bar: Progress | None = None
        self._task = None

    def update(self, done: int, total: int) -> None:
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
            self._task = self._bar.add_task(self.description, total=total)
        self._bar.update(self._task, completed=done, total=total)

    def __enter__(self) -> LazyProgress:
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()


def _fmt(value: float, digits: int = 3) -> str:
    if value == 0 or value != value:
        return str(value)
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 0.01:
        return f"{value:.{digits}g}" if magnitude < 1 else f"{value:.{max(digits - 1, 1)}f}"
    return f"{value:.3e}"


@app.command()
def measure(
    model: str | None = typer.Option(
        None, "--model", "-m", help="Built-in name, HF directory or .gguf (default smollm2-135m)."
    ),
    engine: str = typer.Option("transformers", "--engine", help="Execution engine."),
    text: str | None = typer.Option(
        None, "--text", help=".txt or .jsonl text; prompts come from its evaluation split."
    ),
    prompts: str | None = typer.Option(
        None, "--prompts", help=".jsonl ({'prompt': ...} per line) or .txt (one per line)."
    ),
    num_prompts: int = typer.Option(
        4, "--num-prompts", help="Prompts cut from the evaluation text (ignored with --prompts)."
    ),
    prompt_tokens: int = typer.Option(
        128, "--prompt-tokens", help="Length of each generated prompt in tokens."
    ),
    batch_size: int = typer.Option(1, "--batch-size", help="Sequences per forward pass."),
    max_new_tokens: int = typer.Option(
        64, "--max-new-tokens", help="Tokens generated per prompt (end-of-text ignored)."
    ),
    repeats: int = typer.Option(
        3, "--repeats", help="Measured passes over all prompts; median and spread reported."
    ),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads (default: torch's choice)."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N or auto."),
    meter: str = typer.Option("auto", "--meter", help="auto, rapl, nvml, rapl+nvml or cpu-model."),
    watts_per_core: float | None = typer.Option(
        None, "--watts-per-core", help="cpu-model: watts per busy core."
    ),
    country: str | None = typer.Option(
        None, "--country", help="ISO 3166 country code for grid carbon intensity."
    ),
    region: str | None = typer.Option(None, "--region", help="Cloud region, e.g. gcp:europe-west1."),
    carbon_intensity: float | None = typer.Option(
        None, "--carbon-intensity", help="Grid intensity in gCO2e/kWh."
    ),
    pue: float = typer.Option(1.0, "--pue", help="Data-centre power usage effectiveness (>= 1)."),
    db: str | None = DbOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Measure energy, speed and carbon per token of a model on a generation workload."""
    from greenlm.store import Store
    from greenlm.workload import MeasureConfig, run_measure

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
        meter=meter,
        watts_per_core=watts_per_core,
        country=country,
        region=region,
        carbon_intensity=carbon_intensity,
        pue=pue,
    )
    with Store(db) as store, LazyProgress("measuring") as bar:
        result = run_measure(config, store=store, announce=_note, progress=bar.update)
    record = result.to_dict()
    if as_json:
        _emit_json(record)
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
        table.add_row(label, _fmt(r[key]), f"{_fmt(spread['min'])} – {_fmt(spread['max'])}")
    out.print(table)
    source = (
        "ESTIMATED by a model, not a hardware counter"
        if r["energy_source"] == "estimated"
        else "measured by hardware counters"
    )
    lines = [
        f"energy: meter {r['meter']} ({source})",
        f"carbon: {r['intensity_g_per_kwh']:g} gCO2e/kWh ({r['intensity_source']}), PUE {r['pue']:g}",
        f"workload: {r['num_prompts']} prompts of ~{r['mean_prompt_tokens']:.0f} tokens from {r['text']}, "
        f"{r['max_new_tokens']} new tokens each, {r['repeats']} repeats; peak RSS {r['peak_rss_mb']:.0f} MB",
        f"model load: {r['load_s']:.2f} s ({r['load_source']})",
        f"stored as run {r['run_id']}",
    ]
    for line in lines:
        out.print(line, markup=False)


@app.command()
def meters(as_json: bool = JsonOpt) -> None:
    """Which energy meters this machine has, and why the others are absent."""
    from greenlm.energy import probe_meters

    statuses = probe_meters()
    if as_json:
        _emit_json(
            [
                {
                    "name": s.name,
                    "available": s.available,
                    "energy_source": s.energy_source,
                    "reason": s.reason,
                    "details": s.details,
                }
                for s in statuses
            ]
        )
        return
    table = Table(title="energy meters (auto-detection order)")
    for col in ("meter", "available", "kind", "why / details"):
        table.add_column(col)
    for s in statuses:
        about = s.reason if not s.available else ", ".join(f"{k}: {v}" for k, v in s.details.items())
        table.add_row(s.name, "yes" if s.available else "no", s.energy_source, about)
    out.print(table)


@app.command()
def runs(
    limit: int = typer.Option(20, "--limit", "-n", help="How many rows, newest first."),
    db: str | None = DbOpt,
    as_json: bool = JsonOpt,
) -> None:
    """The stored measurement rows, newest first."""
    from greenlm.store import Store

    if limit < 1:
        raise GreenlmError(f"--limit must be at least 1, got {limit}")
    with Store(db) as store:
        rows = store.runs(limit=limit)
        path = store.path
    if as_json:
        _emit_json(
            [json.loads(r["record_json"]) | {"created_at": r["created_at"], "kind": r["kind"]} for r in rows]
        )
        return
    if not rows:
        out.print(f"no runs stored in {path} yet: run `greenlm measure`", markup=False)
        return
    table = Table(title=f"runs in {path}")
    for col in (
        "run_id",
        "when (UTC)",
        "kind",
        "model",
        "engine",
        "meter",
        "decode J/token",
        "decode tok/s",
        "gCO2e/1k tok",
    ):
        table.add_column(col)
    for r in rows:
        meter = f"{r['meter']} ({r['energy_source']})" if r["meter"] else ""
        table.add_row(
            r["run_id"],
            r["created_at"],
            r["kind"],
            r["model"],
            r["engine"] or "",
            meter,
            *(
                _fmt(r[c]) if r[c] is not None else ""
                for c in ("decode_j_per_token", "decode_tokens_per_s", "carbon_g_per_1k_tokens")
            ),
        )
    out.print(table)


def _usage_errors() -> tuple[type[BaseException], ...]:
    """Flag-parsing errors: recent typer vendors click, older typer raises click's own."""
    found = []
    for module in ("typer._click.exceptions", "click.exceptions"):
        try:
            found.append(importlib.import_module(module).UsageError)
        except (ImportError, AttributeError):
            continue
    return tuple(found)


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2, never a traceback."""
    try:
        code = app(standalone_mode=False)
    except GreenlmError as exc:
        err.print(f"error: {exc}", markup=False, style="red", soft_wrap=True)
        sys.exit(2)
    except _usage_errors() as exc:
        ctx = getattr(exc, "ctx", None)
        name = ctx.command.name if ctx is not None and ctx.command is not None else None
        where = f"greenlm {name} --help" if name and ctx.parent is not None else "greenlm --help"
        err.print(f"error: {exc.format_message()} (see `{where}`)", markup=False, style="red", soft_wrap=True)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        err.print("interrupted", style="red")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
