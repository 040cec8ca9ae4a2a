"""A grid intensity reading, and the signal that never changes: the one figure `--country/--region/
--carbon-intensity` resolved (what `measure` uses)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from greenlm.energy.carbon import GridIntensity

MAX_INTENSITY_G_PER_KWH = 5000.0  # no grid is above ~1,200: a typo guard


@dataclass(frozen=True)
class GridReading:
    intensity_g_per_kwh: float
    source: str
    trace_time: str | None = None  # the time series' own timestamp now playing (replays and providers)
    stale: bool = False  # a provider that failed: the figure is its last good one (or the fallback)


class GridSignal(Protocol):
    """What every grid signal answers. `now()` never waits on the network in the caller's thread."""

    kind: str

    def start(self) -> None: ...

    def now(self) -> GridReading: ...

    def close(self) -> None: ...

    def describe(self) -> dict: ...


class FixedIntensity:
    kind = "fixed"

    def __init__(self, intensity: GridIntensity):
        self.reading = GridReading(intensity.intensity_g_per_kwh, intensity.source)

    def start(self) -> None:
        pass

    def now(self) -> GridReading:
        return self.reading

    def close(self) -> None:
        pass

    def describe(self) -> dict:
        return {"kind": self.kind, "source": self.reading.source}
