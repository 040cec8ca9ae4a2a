"""One progress event for every long step greenlm runs: calibration passes, evaluation windows, tensors
written, candidates judged, training steps. A producer calls `progress(ProgressEvent(...))`; the CLI draws the
events as a bar on stderr, a library user may log them or ignore them (the default).

A step that runs an inner one names the phase its user sees with `relabel`, e.g. the pipeline's
`relabel(progress, "quality vs parent")` around the evaluation windows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class ProgressEvent:
    what: str  # the phase, as its user reads it: "calibrating", "candidates", "training"
    done: int
    total: int
    unit: str = ""  # what `done` and `total` count: "windows", "tensors", "steps", "candidates"
    # figures of the phase beside the count (training: loss, energy_j, forecast, eta_s); empty for most
    detail: Mapping[str, Any] = field(default_factory=dict)


Progress = Callable[[ProgressEvent], None]


def no_progress(_event: ProgressEvent) -> None:
    """The progress callback of a caller that wants none."""


def relabel(progress: Progress, what: str) -> Progress:
    """`progress` with every event renamed `what`: the caller's name for an inner step's phase."""
    return lambda event: progress(replace(event, what=what))
