"""What the control loop and the dashboard see of what they watch: a narrow view, not the server.

`Server` provides it; a gateway in front of other servers can provide the same and reuse the controller,
the policies and the dashboard unchanged. The view reads; the control loop's target adds the two things the
loop changes: the grid intensity the energy account converts at from now on, and a decision carried out.
"""

from __future__ import annotations

from typing import Protocol

from greenlm.grid.reading import GridReading
from greenlm.serve.decisions import Decision
from greenlm.serve.policies import State


class ServingView(Protocol):
    @property
    def model_id(self) -> str:
        """The id clients send as `model` (the label of every metric)."""

    @property
    def adaptive(self) -> bool:
        """A ladder with policies (False: one model, nothing decided)."""

    @property
    def max_cores(self) -> int:
        """The CPU cores it started with."""

    def state(self) -> State:
        """The active variant, the cores it holds, whether a variant is loaded."""

    def load_stats(self, recent_s: float, *, reset_peak: bool = True) -> dict:
        """Running and queued requests, recent p90 TTFT and queue wait, idle time, tokens still to generate
        (see `Scheduler.load_stats`); only the control loop resets the peak."""

    def ledger_snapshot(self) -> dict:
        """The energy ledger's totals now (meter total J, carbon g, output tokens, ...)."""

    def energy(self) -> dict:
        """The energy account as /energy answers it: the ledger's totals with the grid they are converted at."""

    def variants(self) -> list[dict]:
        """The ladder: each variant's figures, whether it is loaded and active, tokens served on it."""


class ControlTarget(ServingView, Protocol):
    def follow_grid(self, reading: GridReading) -> None:
        """Energy from now on converts to carbon at `reading` (each tick of the control loop)."""

    def apply(self, decision: Decision) -> dict:
        """Carry out `decision`: what it cost (load seconds and joules, CPUs), or {"error": why it failed}."""
