"""What every command shares: the consoles, JSON output, number formatting, progress (the flags: options.py)."""

from __future__ import annotations

import json
import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from greenlm.progress import ProgressEvent

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def emit_json(payload) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")


def note(message: str) -> None:
    err.print(message, markup=False, style="yellow", soft_wrap=True)


def progress_bar(*extra_columns) -> Progress:
    """The commands' progress bar on stderr: phase, bar, done/total, elapsed, then `extra_columns`."""
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        *extra_columns,
        console=err,
        transient=True,
    )


class LazyProgress:
    """A progress bar on stderr that appears with the first event, so an early error prints alone. Called with
    each `greenlm.progress.ProgressEvent`; the bar reads `description` when one is given (one count per
    command: candidates, windows), else each event's phase (calibrating, step 2/3: gptq, ...)."""

    def __init__(self, description: str = ""):
        self.description = description
        self._bar: Progress | None = None
        self._task = None

    def __call__(self, event: ProgressEvent) -> None:
        label = self.description or event.what
        if self._bar is None:
            self._bar = progress_bar()
            self._bar.start()
            self._task = self._bar.add_task(label, total=event.total)
        self._bar.update(self._task, description=label, completed=event.done, total=event.total)

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
