"""What every meter shares: readings taken at window edges, measurements between two readings.

A window is just a pair of readings, so windows nest and overlap freely (a prefill window inside a
generate window costs two extra reads, nothing more). Meters never keep per-window state.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

EnergySource = Literal["measured", "estimated"]


@dataclass(frozen=True)
class Reading:
    """An opaque snapshot taken at a window edge; only the meter that took it can interpret it."""

    time_s: float  # time.perf_counter() when the counters were read
    values: dict[str, float]  # meter-specific raw values (cumulative counters, CPU seconds, ...)
    parts: tuple[Reading, ...] = ()  # a composite meter's readings of its member meters, in order


@dataclass(frozen=True)
class Measurement:
    """Energy spent between two readings, split by domain, labelled with where it came from."""

    meter: str  # "rapl", "nvml", "cpu-model", or "rapl+nvml" for a composite
    energy_source: EnergySource
    duration_s: float
    energy_j: dict[str, float]  # additive domains: their sum is the total
    detail_j: dict[str, float] = field(default_factory=dict)  # already inside an additive domain
    # Which meter produced a domain and how, (meter, energy_source), where that differs from this
    # measurement's own: a composite's members ("gpu-0": ("nvml", "measured"), "cpu": ("cpu-model", ...)).
    origin: dict[str, tuple[str, EnergySource]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Enforced here so no meter, and no caller doing arithmetic on measurements, can store nonsense.
        if self.energy_source not in ("measured", "estimated"):
            raise ValueError(f"energy_source must be 'measured' or 'estimated', got {self.energy_source!r}")
        if not (math.isfinite(self.duration_s) and self.duration_s >= 0):
            raise ValueError(f"duration_s must be finite and >= 0, got {self.duration_s}")
        for kind, domains in (("energy_j", self.energy_j), ("detail_j", self.detail_j)):
            for domain, joules in domains.items():
                if not (math.isfinite(joules) and joules >= 0):
                    raise ValueError(f"{kind}[{domain!r}] must be finite and >= 0, got {joules}")
        for domain, (_meter, source) in self.origin.items():
            if source not in ("measured", "estimated"):
                raise ValueError(f"origin[{domain!r}] has energy_source {source!r}")

    def domain_origin(self, domain: str) -> tuple[str, EnergySource]:
        """(meter, "measured" | "estimated") of one domain."""
        return self.origin.get(domain, (self.meter, self.energy_source))

    def domains(self) -> dict[str, dict[str, Any]]:
        """Every domain, additive and detail, with its joules and where they came from (JSON-ready)."""
        out: dict[str, dict[str, Any]] = {}
        for additive, domains in ((True, self.energy_j), (False, self.detail_j)):
            for domain, joules in domains.items():
                meter, source = self.domain_origin(domain)
                out[domain] = {
                    "energy_j": joules,
                    "additive": additive,
                    "meter": meter,
                    "energy_source": source,
                }
        return out

    @property
    def total_j(self) -> float:
        return sum(self.energy_j.values())

    @property
    def avg_power_w(self) -> float:
        return self.total_j / self.duration_s if self.duration_s > 0 else 0.0

    def minus(self, inner: Measurement) -> Measurement:
        """This window less a window inside it (decode = generate - prefill), per domain, floored at 0.

        Two windows read a few microseconds apart can differ by counter noise; a tiny negative
        difference means "nothing", not negative energy.
        """
        if inner.meter != self.meter:
            raise ValueError(f"cannot subtract a {inner.meter} measurement from a {self.meter} one")
        both = (self.energy_source, inner.energy_source)
        source: EnergySource = "estimated" if "estimated" in both else "measured"

        def sub(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
            return {k: max(0.0, v - b.get(k, 0.0)) for k, v in a.items()}

        return Measurement(
            meter=self.meter,
            energy_source=source,
            duration_s=max(0.0, self.duration_s - inner.duration_s),
            energy_j=sub(self.energy_j, inner.energy_j),
            detail_j=sub(self.detail_j, inner.detail_j),
            origin=dict(self.origin),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "meter": self.meter,
            "energy_source": self.energy_source,
            "duration_s": self.duration_s,
            "total_j": self.total_j,
            "avg_power_w": self.avg_power_w,
            "energy_j": dict(self.energy_j),
            "detail_j": dict(self.detail_j),
            "domains": self.domains(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Measurement:
        """Inverse of to_dict (derived fields total_j and avg_power_w are recomputed, not trusted)."""
        return cls(
            meter=data["meter"],
            energy_source=data["energy_source"],
            duration_s=float(data["duration_s"]),
            energy_j={k: float(v) for k, v in data["energy_j"].items()},
            detail_j={k: float(v) for k, v in data.get("detail_j", {}).items()},
            origin={
                k: (v["meter"], v["energy_source"])
                for k, v in data.get("domains", {}).items()
                if (v["meter"], v["energy_source"]) != (data["meter"], data["energy_source"])
            },
        )


@dataclass
class Window:
    """Handed out by Meter.window(); `measurement` is filled in when the with-block exits."""

    start: Reading
    measurement: Measurement | None = None


def window_duration_s(start: Reading, end: Reading) -> float:
    """Seconds between two readings; swapped readings are a caller bug, not a zero-length window."""
    duration_s = end.time_s - start.time_s
    if duration_s < 0:
        raise ValueError("end reading was taken before start reading: pass (start, end) in that order")
    return duration_s


class Meter(ABC):
    """A source of energy readings. Subclasses implement read() and measure(); windows come free."""

    name: str
    energy_source: EnergySource
    # Set by get_meter(): one line saying which meter was chosen and why, for the caller to announce once.
    selection_note: str = ""

    @abstractmethod
    def read(self) -> Reading:
        """Snapshot the counters now."""

    @abstractmethod
    def measure(self, start: Reading, end: Reading) -> Measurement:
        """Energy between two readings of this meter; handles counter wrap-around; never negative."""

    def begin_window(self) -> Reading:
        return self.read()

    def end_window(self, start: Reading) -> Measurement:
        return self.measure(start, self.read())

    @contextmanager
    def window(self) -> Iterator[Window]:
        """`with meter.window() as w: ...` then `w.measurement`.

        The window is closed even when the block raises: the energy was spent either way.
        """
        w = Window(start=self.begin_window())
        try:
            yield w
        finally:
            w.measurement = self.end_window(w.start)

    def describe(self) -> dict[str, Any]:
        """JSON-ready facts about this meter (domains, hardware, constants used)."""
        return {"meter": self.name, "energy_source": self.energy_source}

    def close(self) -> None:  # noqa: B027 (a no-op default, not an abstract method: most meters hold nothing)
        """Release threads and libraries. Idempotent."""

    def __enter__(self) -> Meter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
