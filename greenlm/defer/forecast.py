"""Carbon-intensity forecasts the planner reads, each with its source and model said.

    TraceForecaster        a replayed CSV forecast by a stated model: `yesterday` (the same time a day
                           earlier), `persistence` (the present value held) or `perfect` (the trace itself:
                           perfect foresight, for comparison); the slot holding now is always the observed value
    ElectricityMapsForecaster  Electricity Maps' forecast endpoint for a zone (httpx, token from the environment)
    WattTimeForecaster     WattTime's marginal-emissions (co2_moer) forecast through its official `watttime`
                           client (credentials from WATTTIME_USER / WATTTIME_PASSWORD), lbs/MWh converted
                           to g/kWh once here
    FlatForecaster         a fixed figure: no forecast, so nothing is gained by waiting and work runs at once

A provider is polled in a background thread; `version` changes when a new forecast arrives, so the planner
re-plans. Until a provider first answers, and whenever it fails, the last good forecast stands (or the
present value held), and the failure is said once.
"""

from __future__ import annotations

import bisect
import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Protocol

from greenlm.defer.clock import iso
from greenlm.defer.planner import Slot
from greenlm.errors import GreenlmError
from greenlm.grid.electricitymaps import (
    ELECTRICITY_MAPS_API,
    ELECTRICITY_MAPS_TOKEN_ENV,
    ElectricityMapsApi,
    check_intensity,
)
from greenlm.grid.poller import Poller
from greenlm.grid.reading import GridReading

log = logging.getLogger(__name__)

DAY_S = 86400.0
WATTTIME_USER_ENV, WATTTIME_PASSWORD_ENV = "WATTTIME_USER", "WATTTIME_PASSWORD"
G_PER_KWH_PER_LB_PER_MWH = 0.45359237  # 1 lb = 0.45359237 kg; kg/MWh = g/kWh


@dataclass(frozen=True)
class Forecast:
    """Intensity from each point's time until the next (the last point holds for `step_s`)."""

    starts_s: tuple[float, ...]
    values_g_per_kwh: tuple[float, ...]
    step_s: float
    source: str
    model: str

    def __post_init__(self) -> None:
        if not self.starts_s or len(self.starts_s) != len(self.values_g_per_kwh):
            raise ValueError("a forecast needs as many times as values, at least one")

    @property
    def end_s(self) -> float:
        return self.starts_s[-1] + self.step_s

    def value_at(self, t: float) -> float:
        i = bisect.bisect_right(self.starts_s, t) - 1
        return self.values_g_per_kwh[max(0, min(i, len(self.values_g_per_kwh) - 1))]

    def slots(self, now_s: float, until_s: float) -> list[Slot]:
        """Slots from `now_s` to `until_s`, cut at the forecast's points: before the first point its value
        holds, beyond the last the last value holds (`beyond_horizon` says when that happens)."""
        until_s = max(until_s, now_s + 1e-3)
        bounds = [now_s, *(t for t in self.starts_s if now_s < t < until_s), until_s]
        return [Slot(a, b, self.value_at(a)) for a, b in zip(bounds, bounds[1:], strict=False)]

    def beyond_horizon(self, until_s: float) -> bool:
        return until_s > self.end_s

    def to_dict(self, now_s: float | None = None, max_points: int = 400) -> dict:
        points = [
            {"t_s": t, "time": iso(t), "intensity_g_per_kwh": v}
            for t, v in zip(self.starts_s, self.values_g_per_kwh, strict=True)
            if now_s is None or t + self.step_s > now_s
        ][:max_points]
        return {"source": self.source, "model": self.model, "step_s": self.step_s, "points": points}


class Forecaster(Protocol):
    kind: str
    model: str

    @property
    def version(self) -> object:
        """Changes when the forecast does (the planner re-plans)."""

    def start(self) -> None: ...

    def forecast(self, now_s: float, horizon_s: float) -> Forecast: ...

    def close(self) -> None: ...

    def describe(self) -> dict: ...


# ---- a replayed trace -----------------------------------------------------------------------------------
class TraceForecaster:
    """A trace (times, values) forecast by `model`; lookups wrap when the trace loops (as its replay does)."""

    kind = "trace"

    def __init__(self, times: list[float], values: list[float], model: str, *, name: str, loop: bool = True):
        if model not in ("yesterday", "persistence", "perfect"):
            raise GreenlmError(f"unknown trace forecast model {model!r}: yesterday, persistence or perfect")
        self.times, self.values, self.model, self.name, self.loop = (
            list(times),
            list(values),
            model,
            name,
            loop,
        )
        self.step_s = self.times[-1] - self.times[-2] if len(self.times) > 1 else 3600.0
        self.period_s = self.times[-1] - self.times[0] + self.step_s
        self._now_row: int | None = None

    def _wrap(self, t: float) -> float:
        if self.loop and t >= self.times[0] + self.period_s:
            return self.times[0] + (t - self.times[0]) % self.period_s
        return t

    def row(self, t: float) -> int:
        i = bisect.bisect_right(self.times, self._wrap(t)) - 1
        return max(0, min(i, len(self.values) - 1))

    def actual(self, t: float) -> float:
        """What the grid did at `t` (the trace itself)."""
        return self.values[self.row(t)]

    def row_start(self, t: float) -> float:
        """The (unwrapped) start of the row holding `t`."""
        wrapped = self._wrap(t)
        return t - (wrapped - self.times[self.row(t)])

    @property
    def version(self) -> object:
        return self._now_row

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass

    def label(self) -> str:
        return {
            "perfect": f"{self.name}: the trace itself (perfect foresight, for comparison)",
            "yesterday": f"{self.name}: forecast = the same time a day earlier; the current interval observed",
            "persistence": f"{self.name}: forecast = the present value held",
        }[self.model]

    def forecast(self, now_s: float, horizon_s: float) -> Forecast:
        self._now_row = self.row(now_s)
        first = self.row_start(now_s)
        count = max(1, math.ceil((now_s + horizon_s - first) / self.step_s) + 1)
        starts = [first + k * self.step_s for k in range(count)]
        present = self.actual(now_s)
        if self.model == "perfect":
            values = [self.actual(t) for t in starts]
        elif self.model == "persistence":
            values = [present] * count
        else:  # yesterday's same time; the first day of a trace has no yesterday: the present held
            values = [present] + [
                self.actual(t - DAY_S) if t - DAY_S >= self.times[0] else present for t in starts[1:]
            ]
        return Forecast(tuple(starts), tuple(values), self.step_s, self.label(), self.model)

    def describe(self) -> dict:
        return {"kind": self.kind, "model": self.model, "source": self.label(), "step_s": self.step_s}


class FlatForecaster:
    """A fixed figure: every slot the same, so the planner runs work as capacity allows."""

    kind = "fixed"
    model = "none"
    version = 0

    def __init__(self, intensity_g_per_kwh: float, source: str):
        self.intensity_g_per_kwh, self.source = float(intensity_g_per_kwh), source

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass

    def forecast(self, now_s: float, horizon_s: float) -> Forecast:
        return Forecast(
            (now_s,), (self.intensity_g_per_kwh,), max(horizon_s, 1.0),
            f"{self.source} (a fixed figure: no forecast, nothing gained by waiting)", self.model,
        )  # fmt: skip

    def describe(self) -> dict:
        return {"kind": self.kind, "model": self.model, "source": self.source}


# ---- live providers -------------------------------------------------------------------------------------
class _Polled(Poller):
    """A provider's forecast fetched every `poll_s` in a background thread; the last good one stands."""

    kind = "provider"

    def __init__(self, fallback_g_per_kwh: float, poll_s: float, timeout_s: float):
        super().__init__()
        self.thread_name = f"greenlm-{self.kind}-forecast"
        self.fallback_g_per_kwh = float(fallback_g_per_kwh)
        self.poll_s, self.timeout_s = float(poll_s), float(timeout_s)
        self._forecast: Forecast | None = None
        self._version = 0
        self._lock = threading.Lock()
        self._failing = False
        self.polls = self.failures = 0

    def fetch(self) -> Forecast:
        raise NotImplementedError

    def poll_once(self) -> None:
        self.polls += 1
        try:
            fresh = self.fetch()
        except GreenlmError as exc:
            self.failures += 1
            if not self._failing:
                log.warning("grid forecast: %s; keeping the last forecast", exc)
            self._failing = True
            return
        if self._failing:
            log.warning("grid forecast: %s answers again", self.kind)
        self._failing = False
        with self._lock:
            if fresh != self._forecast:
                self._forecast = fresh
                self._version += 1

    @property
    def version(self) -> object:
        return self._version

    def forecast(self, now_s: float, horizon_s: float) -> Forecast:
        with self._lock:
            current = self._forecast
        if current is None:
            return Forecast(
                (now_s,), (self.fallback_g_per_kwh,), max(horizon_s, 1.0),
                f"{self.kind}: no forecast yet (the present figure held)", "none",
            )  # fmt: skip
        return current

    def now(self) -> GridReading:
        """The forecast's value for now (a grid signal for the energy account)."""
        now = time.time()
        with self._lock:
            current = self._forecast
        if current is None:
            return GridReading(self.fallback_g_per_kwh, f"{self.kind} (no forecast yet)", stale=True)
        return GridReading(current.value_at(now), current.source, iso(now), stale=self._failing)

    def describe(self) -> dict:
        return {"kind": self.kind, "model": self.model, "polls": self.polls, "failures": self.failures}


def _points(pairs: list[tuple[float, float]], who: str) -> tuple[tuple[float, ...], tuple[float, ...], float]:
    if not pairs:
        raise GreenlmError(f"{who}'s forecast has no points")
    pairs = sorted(pairs)
    times = tuple(t for t, _ in pairs)
    steps = [b - a for a, b in zip(times, times[1:], strict=False) if b > a]
    step = min(steps) if steps else 3600.0
    return times, tuple(v for _, v in pairs), step


def _parse_time(text: str, who: str) -> float:
    try:
        parsed = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        raise GreenlmError(f"{who}'s forecast has a bad time {text!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


class ElectricityMapsForecaster(_Polled):
    """Electricity Maps' carbon-intensity forecast for `zone` (`auth-token` header from `token_env`)."""

    kind = "electricitymaps"
    model = "provider"

    def __init__(
        self,
        zone: str,
        *,
        fallback_g_per_kwh: float,
        url: str = ELECTRICITY_MAPS_API,
        token_env: str = ELECTRICITY_MAPS_TOKEN_ENV,
        poll_s: float = 900.0,
        timeout_s: float = 10.0,
    ):
        self.api = ElectricityMapsApi(
            zone, url.rstrip("/") + "/carbon-intensity/forecast", token_env=token_env, timeout_s=timeout_s,
            asked_by="--grid electricitymaps", csv_hint="--grid-csv FILE",
        )  # fmt: skip
        super().__init__(fallback_g_per_kwh, poll_s, timeout_s)
        self.zone, self.url = zone, self.api.url

    def fetch(self) -> Forecast:
        data, who = self.api.get(), self.api.who
        try:
            pairs = [
                (_parse_time(r["datetime"], who), check_intensity(float(r["carbonIntensity"]), who))
                for r in data["forecast"]
            ]
        except (ValueError, KeyError, TypeError):
            raise GreenlmError(
                f"{who}'s answer has no forecast of carbonIntensity: {str(data)[:200]}"
            ) from None
        times, values, step = _points(pairs, who)
        return Forecast(times, values, step, f"Electricity Maps forecast for {self.zone}", self.model)

    def describe(self) -> dict:
        return {**super().describe(), "zone": self.zone, "url": self.url}


class WattTimeForecaster(_Polled):
    """WattTime's marginal operating emissions rate (co2_moer) forecast for `region`, through the official
    `watttime` client (`pip install 'greenlm[watttime]'`); `url` points it elsewhere (a test's server)."""

    kind = "watttime"
    model = "provider"

    def __init__(
        self,
        region: str,
        *,
        fallback_g_per_kwh: float,
        url: str | None = None,
        horizon_hours: int = 24,
        poll_s: float = 900.0,
        timeout_s: float = 60.0,
    ):
        missing = [e for e in (WATTTIME_USER_ENV, WATTTIME_PASSWORD_ENV) if not os.environ.get(e, "").strip()]
        if missing:
            raise GreenlmError(
                f"--grid watttime needs your WattTime account in ${WATTTIME_USER_ENV} and ${WATTTIME_PASSWORD_ENV} "
                f"({', '.join('$' + m for m in missing)} unset): export them, or replay a CSV with --grid-csv FILE"
            )
        try:
            from watttime import WattTimeForecast
        except ImportError:
            raise GreenlmError(
                "--grid watttime uses WattTime's official client: pip install 'greenlm[watttime]'"
            ) from None
        super().__init__(fallback_g_per_kwh, poll_s, timeout_s)
        self.region, self.horizon_hours = region, int(horizon_hours)
        self.client = WattTimeForecast()
        if url:
            self.client.url_base = url.rstrip("/")  # the client reads its base URL from this attribute
        self.url = self.client.url_base

    def fetch(self) -> Forecast:
        who = f"WattTime ({self.region})"
        try:
            answer = self.client.get_forecast_json(
                self.region, signal_type="co2_moer", horizon_hours=self.horizon_hours
            )
        except Exception as exc:  # the client raises requests', its own RuntimeError and bare Exception
            raise GreenlmError(f"{who} at {self.url} failed: {str(exc).splitlines()[0]}") from None
        try:
            units = (answer.get("meta") or {}).get("units", "lbs_co2_per_mwh")
            if units != "lbs_co2_per_mwh":
                raise GreenlmError(f"{who} answered in {units!r}; greenlm reads lbs_co2_per_mwh")
            pairs = [
                (
                    _parse_time(p["point_time"], who),
                    check_intensity(float(p["value"]) * G_PER_KWH_PER_LB_PER_MWH, who),
                )
                for p in answer["data"]
            ]
        except (KeyError, TypeError, ValueError, AttributeError):
            raise GreenlmError(f"{who}'s answer has no forecast data: {str(answer)[:200]}") from None
        times, values, step = _points(pairs, who)
        return Forecast(
            times,
            values,
            step,
            f"WattTime co2_moer forecast for {self.region} (marginal emissions)",
            self.model,
        )

    def describe(self) -> dict:
        return {**super().describe(), "region": self.region, "url": self.url, "signal_type": "co2_moer"}
