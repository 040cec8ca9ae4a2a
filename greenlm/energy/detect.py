"""Choosing a meter: by name, or "auto" (hardware counters first, else the CPU-time estimate).

The chosen meter carries `selection_note`, one line saying what was chosen and, on a fallback, why
the better meters were not available, so the caller can announce it once and store it with the row.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from greenlm.energy.base import EnergySource, Meter
from greenlm.energy.composite import CompositeMeter
from greenlm.energy.cpu_model import CpuModelMeter
from greenlm.energy.nvml import NvmlMeter
from greenlm.energy.rapl import POWERCAP_ROOT, RaplMeter
from greenlm.errors import GreenlmError, MeterUnavailable

METER_NAMES = ("rapl", "nvml", "cpu-model")
_SOURCES: dict[str, EnergySource] = {"rapl": "measured", "nvml": "measured", "cpu-model": "estimated"}
_VALID_SPECS = "auto, rapl, nvml, cpu-model, or a '+' join such as rapl+nvml or nvml+cpu-model"


@dataclass(frozen=True)
class MeterStatus:
    name: str
    available: bool
    energy_source: EnergySource
    reason: str  # why not available; empty when available
    details: dict[str, Any] = field(default_factory=dict)  # the meter's describe() when available

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _build(name: str, *, watts_per_core: float | None, rapl_root: str) -> Meter:
    if name == "rapl":
        return RaplMeter(rapl_root)
    if name == "nvml":
        return NvmlMeter()
    return CpuModelMeter(watts_per_core=watts_per_core)


def probe_meters(*, rapl_root: str = POWERCAP_ROOT, watts_per_core: float | None = None) -> list[MeterStatus]:
    """Every backend, in METER_NAMES order, with why it is unavailable or what it would measure."""
    statuses = []
    for name in METER_NAMES:
        try:
            meter = _build(name, watts_per_core=watts_per_core, rapl_root=rapl_root)
        except MeterUnavailable as e:
            statuses.append(MeterStatus(name, False, _SOURCES[name], str(e)))
            continue
        try:
            details = meter.describe()
        finally:
            meter.close()
        statuses.append(MeterStatus(name, True, _SOURCES[name], "", details))
    return statuses


def _check_watts(watts_per_core: float | None) -> None:
    if watts_per_core is None:
        return
    if isinstance(watts_per_core, bool) or not isinstance(watts_per_core, (int, float)):
        raise GreenlmError(f"watts_per_core must be a number of watts, got {watts_per_core!r}")
    if not (math.isfinite(watts_per_core) and watts_per_core > 0):
        raise GreenlmError(f"watts_per_core must be > 0 watts, got {watts_per_core}")


def _auto(*, watts_per_core: float | None, rapl_root: str) -> tuple[Meter, str]:
    found: list[Meter] = []
    missing: dict[str, str] = {}
    for name in ("rapl", "nvml"):
        try:
            found.append(_build(name, watts_per_core=watts_per_core, rapl_root=rapl_root))
        except MeterUnavailable as e:
            missing[name] = str(e)
    why_not = "; ".join(f"no {name.upper()}: {reason}" for name, reason in missing.items())
    if len(found) == 2:
        return CompositeMeter(found), "meter: rapl+nvml (measured)"
    if found and found[0].name == "rapl":
        return found[0], f"meter: rapl (measured) — {why_not}"
    if found:
        return found[0], (
            f"meter: nvml (measured) — {why_not}; CPU energy is not counted "
            "(ask for nvml+cpu-model to add an estimate of it)"
        )
    cpu = CpuModelMeter(watts_per_core=watts_per_core)
    return cpu, (
        f"meter: cpu-model (estimated) — {why_not}; "
        f"{cpu.watts_per_core:.3g} W per busy core: {cpu.watts_source}"
    )


def get_meter(
    spec: str = "auto",
    *,
    watts_per_core: float | None = None,
    rapl_root: str = POWERCAP_ROOT,
) -> Meter:
    """The meter for `spec`; the result's selection_note says what was chosen and why.

    "auto": RAPL and NVML when present (both -> rapl+nvml), else cpu-model. A named spec forces that
    meter and raises MeterUnavailable, with the reason, when this machine lacks it.
    watts_per_core is used only by cpu-model.
    """
    _check_watts(watts_per_core)
    key = spec.strip().lower()
    if key == "auto":
        meter, note = _auto(watts_per_core=watts_per_core, rapl_root=rapl_root)
        meter.selection_note = note
        return meter
    names = key.split("+")
    if not all(n in METER_NAMES for n in names) or len(set(names)) != len(names):
        raise GreenlmError(f"unknown meter {spec!r}: choose one of {_VALID_SPECS}")
    if "rapl" in names and "cpu-model" in names:
        raise GreenlmError("rapl and cpu-model both count the CPU, so together they double count: choose one")
    meters: list[Meter] = []
    try:
        for name in names:
            meters.append(_build(name, watts_per_core=watts_per_core, rapl_root=rapl_root))
    except BaseException:
        for m in meters:
            m.close()
        raise
    meter = meters[0] if len(meters) == 1 else CompositeMeter(meters)
    meter.selection_note = f"meter: {meter.name} ({meter.energy_source}), as requested"
    return meter
