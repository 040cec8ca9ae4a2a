"""Grid carbon intensity that changes while a server runs: a replayed time series, or a live provider.

    FixedIntensity     the one figure `--country/--region/--carbon-intensity` resolved (what `measure` uses)
    CsvIntensity       a CSV of (timestamp, g/kWh) rows replayed from a moment the caller sets (`start`),
                       at `speed` trace seconds per wall second; each row holds until the next one
    ElectricityMaps    Electricity Maps' latest-intensity API for a zone, polled in the background with the
                       token from an environment variable; until it first answers, and whenever it fails, the
                       last good figure (or the fallback) stands, and the failure is said once

Every signal answers `now()` with a `GridReading` (intensity, where it came from, trace time), never blocks
on the network in the caller's thread.
"""

from __future__ import annotations

import bisect
import csv
import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import httpx

from greenlm.energy.carbon import GridIntensity
from greenlm.errors import GreenlmError

log = logging.getLogger(__name__)

ELECTRICITY_MAPS_URL = "https://api.electricitymap.org/v3/carbon-intensity/latest"
ELECTRICITY_MAPS_TOKEN_ENV = "ELECTRICITYMAPS_TOKEN"
MAX_INTENSITY_G_PER_KWH = 5000.0  # no grid is above ~1,200: a typo guard


@dataclass(frozen=True)
class GridReading:
    intensity_g_per_kwh: float
    source: str
    trace_time: str | None = None  # the time series' own timestamp now playing (replays and providers)
    stale: bool = False  # a provider that failed: the figure is its last good one (or the fallback)


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


def _timestamp(text: str) -> float:
    """Seconds since the epoch of an ISO 8601 time (naive: UTC) or a number of seconds."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def read_intensity_csv(path: str | Path) -> tuple[list[float], list[float]]:
    """(timestamps, intensities) from a CSV whose rows are `timestamp,g_per_kwh` (a header row is allowed;
    timestamps ISO 8601 or epoch seconds, strictly increasing). Every bad row is an error naming its line."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise GreenlmError(
            f"grid intensity CSV '{path}' not found: give a file of 'timestamp,g_per_kwh' rows"
        )
    times: list[float] = []
    values: list[float] = []
    try:
        with p.open(encoding="utf-8-sig", newline="") as f:
            for line_no, row in enumerate(csv.reader(f), start=1):
                cells = [c.strip() for c in row]
                if not any(cells) or cells[0].startswith("#"):
                    continue
                if len(cells) < 2:
                    raise GreenlmError(
                        f"{path} line {line_no}: expected 'timestamp,g_per_kwh', got {','.join(cells)!r}"
                    )
                try:
                    stamp = _timestamp(cells[0])
                except ValueError:
                    if not times and line_no == 1:
                        continue  # a header row
                    raise GreenlmError(
                        f"{path} line {line_no}: timestamp {cells[0]!r} is neither ISO 8601 "
                        "(2025-06-01T13:00:00Z) nor epoch seconds"
                    ) from None
                try:
                    value = float(cells[1])
                except ValueError:
                    value = math.nan
                if not (math.isfinite(value) and 0 <= value <= MAX_INTENSITY_G_PER_KWH):
                    raise GreenlmError(
                        f"{path} line {line_no}: intensity {cells[1]!r} must be gCO2e/kWh from 0 to "
                        f"{MAX_INTENSITY_G_PER_KWH:g}"
                    )
                if times and stamp <= times[-1]:
                    raise GreenlmError(
                        f"{path} line {line_no}: timestamp {cells[0]} is not after the previous row's: sort "
                        "the rows by time"
                    )
                times.append(stamp)
                values.append(value)
    except UnicodeDecodeError:
        raise GreenlmError(
            f"{path} is not a UTF-8 text file: give a CSV of 'timestamp,g_per_kwh' rows"
        ) from None
    except OSError as exc:
        raise GreenlmError(f"cannot read grid intensity CSV {path}: {exc.strerror}") from None
    if not times:
        raise GreenlmError(f"{path} has no 'timestamp,g_per_kwh' rows")
    return times, values


class CsvIntensity:
    """A replayed intensity time series. Trace time = first row + (wall now - start) x speed; after the last
    row the series starts over when `loop`, else the last row holds."""

    kind = "csv"

    def __init__(self, path: str | Path, *, speed: float = 1.0, loop: bool = True, clock=time.monotonic):
        self.path = str(path)
        self.times, self.values = read_intensity_csv(path)
        self.speed = float(speed)
        self.loop = loop
        self.clock = clock
        self._origin: float | None = None
        # a cycle: the span of the rows plus one step (the last row lasts as long as the one before it)
        step = self.times[-1] - self.times[-2] if len(self.times) > 1 else 3600.0
        self.period_s = self.times[-1] - self.times[0] + step

    def start(self, at: float | None = None) -> None:
        """Play the first row from now (or from clock time `at`)."""
        self._origin = self.clock() if at is None else at

    def trace_seconds(self) -> float:
        if self._origin is None:
            self.start()
        offset = max(0.0, (self.clock() - self._origin) * self.speed)
        if self.loop:
            offset %= self.period_s
        return self.times[0] + offset

    def at(self, trace_s: float) -> float:
        i = bisect.bisect_right(self.times, trace_s) - 1
        return self.values[max(0, min(i, len(self.values) - 1))]

    def now(self) -> GridReading:
        t = self.trace_seconds()
        stamp = datetime.fromtimestamp(t, tz=timezone.utc).isoformat(timespec="minutes")
        return GridReading(self.at(t), f"{self.path} (replayed at {self.speed:g}x)", stamp)

    def close(self) -> None:
        pass

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "path": self.path,
            "rows": len(self.times),
            "speed": self.speed,
            "loop": self.loop,
            "min_g_per_kwh": min(self.values),
            "max_g_per_kwh": max(self.values),
        }


class ElectricityMaps:
    """Electricity Maps' latest carbon intensity for `zone`, polled every `poll_s` in a background thread
    (`auth-token` header from `token_env`). `url` may point elsewhere (a proxy, or a test's local server)."""

    kind = "electricitymaps"

    def __init__(
        self,
        zone: str,
        *,
        fallback: GridIntensity,
        url: str = ELECTRICITY_MAPS_URL,
        token_env: str = ELECTRICITY_MAPS_TOKEN_ENV,
        poll_s: float = 300.0,
        timeout_s: float = 10.0,
    ):
        token = os.environ.get(token_env, "").strip()
        if not token:
            raise GreenlmError(
                f"grid provider electricitymaps needs an API token in ${token_env}: export it, or replay a CSV "
                "with grid: {csv: FILE}"
            )
        self.zone, self.url, self.poll_s, self.timeout_s = zone, url, float(poll_s), float(timeout_s)
        self._token = token
        self._reading = GridReading(
            fallback.intensity_g_per_kwh, f"{fallback.source} (until Electricity Maps answers)", stale=True
        )
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False
        self.polls = 0
        self.failures = 0

    def fetch(self) -> GridReading:
        """One request to the provider (raises GreenlmError on any failure)."""
        try:
            response = httpx.get(
                self.url,
                params={"zone": self.zone},
                headers={"auth-token": self._token},
                timeout=self.timeout_s,
            )
        except httpx.HTTPError as exc:
            raise GreenlmError(f"Electricity Maps at {self.url} did not answer: {exc}") from None
        if response.status_code != 200:
            raise GreenlmError(
                f"Electricity Maps answered {response.status_code} for zone {self.zone}: {response.text[:200]}"
            )
        try:
            data = response.json()
            value = float(data["carbonIntensity"])
        except (ValueError, KeyError, TypeError):
            raise GreenlmError(
                f"Electricity Maps' answer has no carbonIntensity: {response.text[:200]}"
            ) from None
        if not (math.isfinite(value) and 0 <= value <= MAX_INTENSITY_G_PER_KWH):
            raise GreenlmError(f"Electricity Maps answered an impossible intensity {value}")
        return GridReading(value, f"Electricity Maps {self.zone} (live)", data.get("datetime"))

    def poll_once(self) -> None:
        self.polls += 1
        try:
            reading = self.fetch()
        except GreenlmError as exc:
            self.failures += 1
            if not self._failing:
                log.warning("grid intensity: %s; keeping the last figure", exc)
            self._failing = True
            with self._lock:
                self._reading = GridReading(
                    self._reading.intensity_g_per_kwh,
                    self._reading.source,
                    self._reading.trace_time,
                    stale=True,
                )
            return
        if self._failing:
            log.warning("grid intensity: Electricity Maps answers again")
        self._failing = False
        with self._lock:
            self._reading = reading

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll_once()
            self._stop.wait(self.poll_s)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="greenlm-grid", daemon=True)
            self._thread.start()

    def now(self) -> GridReading:
        with self._lock:
            return self._reading

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.timeout_s + 1)

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "zone": self.zone,
            "url": self.url,
            "poll_s": self.poll_s,
            "polls": self.polls,
            "failures": self.failures,
        }
