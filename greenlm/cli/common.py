"""What every command shares: the consoles, --json and --db options, number formatting, progress."""

from __future__ import annotations

import json
import sys

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

JsonOpt = typer.Option(False, "--json", help="Print one JSON document instead of a table.")
DbOpt = typer.Option(None, "--db", help="Results store (SQLite). Default: the user data dir, or $GREENLM_DB.")


def emit_json(payload) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")


def note(message: str) -> None:
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


def fmt(value: float, digits: int = 3) -> str:
    if value == 0 or value != value:
        return str(value)
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 0.01:
        return f"{value:.{digits}g}" if magnitude < 1 else f"{value:.{max(digits - 1, 1)}f}"
    return f"{value:.3e}"
