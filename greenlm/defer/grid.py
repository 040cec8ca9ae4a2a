"""The grid deferred work follows, opened from `GridSettings`: its clock, the signal the energy account
converts at, and the forecast the planner reads. Serve, `greenlm batch run` and deferred training open it the
same way."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from greenlm.defer.clock import GridClock, ReplayClock, iso
from greenlm.defer.forecast import (
    ELECTRICITY_MAPS_API,
    ElectricityMapsForecaster,
    FlatForecaster,
    Forecaster,
    TraceForecaster,
    WattTimeForecaster,
)
from greenlm.defer.settings import GridSettings
from greenlm.defer.state import DeferState
from greenlm.energy.carbon import GridIntensity
from greenlm.errors import GreenlmError
from greenlm.grid.electricitymaps import ElectricityMaps
from greenlm.grid.reading import FixedIntensity, GridSignal
from greenlm.grid.replay import CsvIntensity, read_intensity_csv


class ReplaySignal(CsvIntensity):
    """A CSV replay whose origin is set when it is opened: a control loop's later `start()` keeps it (the
    deferral's clock, and a restarted server, read the same replay)."""

    def start(self, at: float | None = None) -> None:
        if self._origin is None or at is not None:
            super().start(at)


@dataclass
class GridSetup:
    settings: GridSettings
    clock: GridClock
    signal: GridSignal  # what the energy account converts at, now
    forecaster: Forecaster  # what the planner reads

    def start(self) -> None:
        self.signal.start()
        if self.forecaster is not self.signal:
            self.forecaster.start()

    def close(self) -> None:
        self.signal.close()
        if self.forecaster is not self.signal:
            self.forecaster.close()

    def describe(self) -> dict:
        return {
            **self.settings.to_dict(),
            "clock": self.clock.describe(),
            "signal": self.signal.describe(),
            "forecast": self.forecaster.describe(),
        }


def replay_key(settings: GridSettings) -> dict:
    """What a kept replay origin must match to be continued (the same file, speed and start)."""
    return {"csv": settings.csv, "speed": settings.speed, "replay_from": settings.replay_from}


def open_grid(
    settings: GridSettings,
    fallback: GridIntensity,
    *,
    origin_unix: float | None = None,
    wall: Callable[[], float] = time.time,
) -> GridSetup:
    """The clock, signal and forecaster of `settings` (nothing started). A replay starts at `origin_unix`
    (a restarted server's kept origin) or now. A provider's missing token fails here. `wall`: the Unix clock
    (a test's)."""
    if settings.csv is not None:
        times, values = read_intensity_csv(settings.csv)
        start = settings.replay_from_s()
        if start is None:
            start = times[0]
        elif not times[0] <= start <= times[-1]:
            raise GreenlmError(
                f"--replay-from {settings.replay_from} is outside {settings.csv} ({iso(times[0])} to {iso(times[-1])})"
            )
        origin = wall() if origin_unix is None else float(origin_unix)
        clock = ReplayClock(origin, start, settings.speed, wall=wall)
        signal = ReplaySignal(settings.csv, speed=settings.speed, loop=settings.loop, clock=wall)
        signal.start(at=origin - (start - times[0]) / settings.speed)
        forecaster = TraceForecaster(
            times, values, settings.trace_forecast, name=settings.csv, loop=settings.loop
        )
        return GridSetup(settings, clock, signal, forecaster)
    if settings.provider is not None:
        name, zone = settings.provider_zone()
        if name == "electricitymaps":
            base = (settings.url or ELECTRICITY_MAPS_API).rstrip("/")
            forecaster = ElectricityMapsForecaster(
                zone, fallback_g_per_kwh=fallback.intensity_g_per_kwh, url=base
            )
            signal = ElectricityMaps(zone, fallback=fallback, url=base + "/carbon-intensity/latest")
            return GridSetup(settings, GridClock(), signal, forecaster)
        forecaster = WattTimeForecaster(
            zone, fallback_g_per_kwh=fallback.intensity_g_per_kwh, url=settings.url
        )
        return GridSetup(settings, GridClock(), forecaster, forecaster)
    flat = FlatForecaster(fallback.intensity_g_per_kwh, fallback.source)
    return GridSetup(settings, GridClock(), FixedIntensity(fallback), flat)


def open_kept_grid(settings: GridSettings, fallback: GridIntensity, state: DeferState) -> GridSetup:
    """`open_grid`, continuing the replay a previous run of this state directory left unfinished batches on
    (their deadlines are times on that replay), when this process can own the directory."""
    origin = None
    if settings.csv is not None and state.unfinished_batches() and state.acquire() is None:
        kept = state.get_meta("replay")
        if kept and kept.get("key") == replay_key(settings):
            origin = kept["origin_unix"]
    return open_grid(settings, fallback, origin_unix=origin)


def keep_replay(setup: GridSetup, state: DeferState) -> None:
    """Remember the replay's origin in a state directory this process owns (a restart continues it)."""
    if isinstance(setup.clock, ReplayClock) and state.owned:
        state.set_meta("replay", {"key": replay_key(setup.settings), "origin_unix": setup.clock.origin_unix})
