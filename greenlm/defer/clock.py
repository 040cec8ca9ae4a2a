"""Grid time: the clock deadlines, windows and forecasts are read on.

A live grid (a provider, or a fixed figure) runs on Unix time. A replayed trace runs on the trace's own time,
`speed` trace seconds per wall second from an origin, so a day of the GB 2020 trace at speed 720 passes in
two wall minutes, and so do the windows of the work planned on it: a `24h` completion window is 24 hours of
grid time. The origin is kept in the state directory, so a server restarted after a crash continues the same
replay instead of starting the trace over.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timezone


class GridClock:
    """Unix time (a live grid): speed 1."""

    kind = "live"
    speed = 1.0

    def __init__(self, wall: Callable[[], float] = time.time):
        self.wall = wall

    def now_s(self) -> float:
        return self.wall()

    def unix_at(self, grid_s: float) -> float:
        """The Unix time at which the grid clock reads `grid_s`."""
        return grid_s

    def wall_seconds(self, grid_seconds: float) -> float:
        """How many wall seconds `grid_seconds` of grid time take."""
        return grid_seconds / self.speed

    def describe(self) -> dict:
        return {"kind": self.kind, "speed": self.speed}


class ReplayClock(GridClock):
    """A trace's own time: `trace_start_s` at Unix time `origin_unix`, then `speed` trace seconds per wall
    second (unwrapped: a looping trace's forecaster wraps its lookups, the clock runs on)."""

    kind = "replay"

    def __init__(
        self, origin_unix: float, trace_start_s: float, speed: float, wall: Callable[[], float] = time.time
    ):
        super().__init__(wall)
        self.origin_unix, self.trace_start_s, self.speed = (
            float(origin_unix),
            float(trace_start_s),
            float(speed),
        )

    def now_s(self) -> float:
        return self.trace_start_s + (self.wall() - self.origin_unix) * self.speed

    def unix_at(self, grid_s: float) -> float:
        return self.origin_unix + (grid_s - self.trace_start_s) / self.speed

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "speed": self.speed,
            "origin_unix": self.origin_unix,
            "trace_start": iso(self.trace_start_s),
        }


def iso(grid_s: float) -> str:
    return datetime.fromtimestamp(grid_s, tz=timezone.utc).isoformat(timespec="minutes")
