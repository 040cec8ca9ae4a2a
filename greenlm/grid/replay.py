"""A replayed grid intensity time series: a CSV of (timestamp, g/kWh) rows played from a moment the caller
sets (`start`), at `speed` trace seconds per wall second; each row holds until the next one."""

from __future__ import annotations

import bisect
import csv
import math
import time
from datetime import datetime, timezone
from pathlib import Path

from greenlm.errors import GreenlmError
from greenlm.grid.reading import MAX_INTENSITY_G_PER_KWH, GridReading


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
