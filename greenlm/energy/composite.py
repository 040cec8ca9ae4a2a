"""Several meters read as one (a GPU job also burns CPU: rapl+nvml)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from greenlm.energy.base import EnergySource, Measurement, Meter, Reading, window_duration_s


class CompositeMeter(Meter):
    """Sums member meters. Domains keep their names unless two members share one, then "<meter>:<domain>".

    The members must measure disjoint hardware (RAPL and NVML do); the caller is responsible for not
    combining two meters of the same CPU.
    """

    def __init__(self, meters: Sequence[Meter]) -> None:
        if not meters:
            raise ValueError("CompositeMeter needs at least one meter")
        self.meters = tuple(meters)
        self.name = "+".join(m.name for m in self.meters)
        # One estimated member makes the sum an estimate.
        measured = all(m.energy_source == "measured" for m in self.meters)
        self.energy_source: EnergySource = "measured" if measured else "estimated"

    def read(self) -> Reading:
        parts = tuple(m.read() for m in self.meters)
        return Reading(time_s=sum(p.time_s for p in parts) / len(parts), values={}, parts=parts)

    def measure(self, start: Reading, end: Reading) -> Measurement:
        duration_s = window_duration_s(start, end)
        if len(start.parts) != len(self.meters) or len(end.parts) != len(self.meters):
            raise ValueError(f"readings were not taken by this {self.name} meter")
        parts = [m.measure(s, e) for m, s, e in zip(self.meters, start.parts, end.parts, strict=True)]
        return Measurement(
            meter=self.name,
            energy_source=self.energy_source,
            duration_s=duration_s,
            energy_j=_merge([(p.meter, p.energy_j) for p in parts]),
            detail_j=_merge([(p.meter, p.detail_j) for p in parts]),
            # Same naming as _merge, so every merged domain says which member measured it and how.
            origin={
                **_merge([(p.meter, {d: p.domain_origin(d) for d in p.energy_j}) for p in parts]),
                **_merge([(p.meter, {d: p.domain_origin(d) for d in p.detail_j}) for p in parts]),
            },
        )

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "parts": [m.describe() for m in self.meters]}

    def close(self) -> None:
        errors = []
        for m in self.meters:
            try:
                m.close()
            except Exception as e:  # close the others anyway
                errors.append(e)
        if errors:
            raise errors[0]


def _merge(named: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    counts = Counter(domain for _, domains in named for domain in domains)
    meter_counts = Counter(meter for meter, _ in named)
    merged: dict[str, Any] = {}
    for i, (meter, domains) in enumerate(named):
        prefix = meter if meter_counts[meter] == 1 else f"{meter}#{i}"  # two meters of one kind
        for domain, joules in domains.items():
            merged[f"{prefix}:{domain}" if counts[domain] > 1 else domain] = joules
    return merged
