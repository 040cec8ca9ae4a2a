"""The settings of work that can wait, checked once so the CLI, the server and library callers agree: the
grid deferred work follows (`GridSettings`) and durations written as `24h`, `90m`, `30s`, `2d`."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone

from greenlm.errors import GreenlmError

PROVIDERS = ("electricitymaps", "watttime")
TRACE_FORECASTS = ("yesterday", "persistence", "perfect")
FORECASTS = ("auto", *TRACE_FORECASTS, "provider")
DEFAULT_FLEX_MAX_WAIT_S = 600.0
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration_s(text, flag: str) -> float:
    """Seconds of '24h', '90m', '30s', '2d' or a bare number of seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smhd]?)\s*", str(text or ""))
        if not match:
            raise GreenlmError(f"{flag} {text!r} is not a duration: write e.g. 24h, 90m, 30s or 2d")
        value = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if not (math.isfinite(value) and value > 0):
        raise GreenlmError(f"{flag} must be a positive duration, got {text!r}")
    return value


def duration_text(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _timestamp(text: str, flag: str) -> float:
    try:
        parsed = datetime.fromisoformat(str(text).strip().replace("Z", "+00:00"))
    except ValueError:
        raise GreenlmError(f"{flag} {text!r} is not an ISO 8601 time such as 2020-03-01T00:00") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


@dataclass(frozen=True)
class GridSettings:
    """The grid deferred work follows: a CSV replayed at `speed` trace seconds per wall second (from its
    first row, or `replay_from`), or a live provider (`electricitymaps:ZONE`, `watttime:REGION`, tokens from
    the environment). `forecast`: for a CSV, the model that forecasts it (`yesterday`: the same time a day
    earlier; `persistence`: the present value held; `perfect`: the trace itself, perfect foresight, for
    comparison only); for a provider, the provider's own forecast. `url`: a provider's endpoint (a proxy, or
    a test's local server)."""

    csv: str | None = None
    speed: float = 1.0
    replay_from: str | None = None
    provider: str | None = None
    forecast: str = "auto"
    url: str | None = None
    loop: bool = True  # a CSV starts over after its last row (else the last row holds)

    def __post_init__(self) -> None:
        if self.csv is not None and self.provider is not None:
            raise GreenlmError("give --grid-csv FILE or --grid PROVIDER:ZONE, not both")
        if not (isinstance(self.speed, (int, float)) and math.isfinite(self.speed) and 0 < self.speed <= 1e7):
            raise GreenlmError(
                f"--replay-speed must be a number of trace seconds per second > 0, got {self.speed!r}"
            )
        if self.speed != 1.0 and self.csv is None:
            raise GreenlmError("--replay-speed replays a CSV: add --grid-csv FILE")
        if self.replay_from is not None:
            if self.csv is None:
                raise GreenlmError("--replay-from is a time in a replayed CSV: add --grid-csv FILE")
            _timestamp(self.replay_from, "--replay-from")
        if self.provider is not None:
            self.provider_zone()  # checks the form
        if self.forecast not in FORECASTS:
            raise GreenlmError(f"--forecast must be one of {', '.join(FORECASTS)}, got {self.forecast!r}")
        if self.csv is not None and self.forecast == "provider":
            raise GreenlmError(
                f"--forecast provider needs --grid PROVIDER:ZONE; a CSV takes {', '.join(TRACE_FORECASTS)}"
            )
        if self.provider is not None and self.forecast in TRACE_FORECASTS:
            raise GreenlmError(
                f"--forecast {self.forecast} forecasts a replayed CSV: a provider forecasts itself"
            )
        if self.url is not None and not str(self.url).startswith(("http://", "https://")):
            raise GreenlmError(f"grid url {self.url!r} is not an http(s) URL")

    @property
    def active(self) -> bool:
        return self.csv is not None or self.provider is not None

    def provider_zone(self) -> tuple[str, str]:
        name, sep, zone = str(self.provider).partition(":")
        name, zone = name.strip().lower(), zone.strip()
        if not sep or not zone or name not in PROVIDERS:
            raise GreenlmError(
                f"--grid {self.provider!r}: write PROVIDER:ZONE with PROVIDER one of {', '.join(PROVIDERS)} "
                "(e.g. electricitymaps:GB, watttime:CAISO_NORTH), or replay a file with --grid-csv"
            )
        return name, zone

    @property
    def trace_forecast(self) -> str:
        """A CSV's forecast model (`auto`: yesterday's same time)."""
        return "yesterday" if self.forecast == "auto" else self.forecast

    def replay_from_s(self) -> float | None:
        return None if self.replay_from is None else _timestamp(self.replay_from, "--replay-from")

    def to_dict(self) -> dict:
        return {
            "csv": self.csv,
            "speed": self.speed,
            "replay_from": self.replay_from,
            "provider": self.provider,
            "forecast": self.forecast,
            "url": self.url,
            "loop": self.loop,
        }
