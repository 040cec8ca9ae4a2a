"""Choosing a meter: by name, or "auto" (the CPU by RAPL or else the CPU model, and NVML's GPUs when present).

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
_VALID_SPECS = "auto, rapl, nvml, cpu-model, or a '+' join such as rapl+nvml or cpu-model+nvml"


@dataclass(frozen=True)
class MeterStatus:
    name: str
    available: bool
    energy_source: EnergySource
    reason: str  # why not available; empty when available
    details: dict[str, Any] = field(default_factory=dict)  # the meter's describe() when available

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CpuModelSettings:
    """What the cpu-model meter takes from the caller; None means the sourced default."""

    watts_per_core: float | None = None
    idle_watts_per_core: float | None = None
    include_children: bool = False


def _build(name: str, *, cpu: CpuModelSettings, rapl_root: str) -> Meter:
    if name == "rapl":
        return RaplMeter(rapl_root)
    if name == "nvml":
        return NvmlMeter()
    return CpuModelMeter(
        watts_per_core=cpu.watts_per_core,
        idle_watts_per_core=cpu.idle_watts_per_core,
        include_children=cpu.include_children,
    )


def probe_meters(
    *,
    rapl_root: str = POWERCAP_ROOT,
    watts_per_core: float | None = None,
    idle_watts_per_core: float | None = None,
) -> list[MeterStatus]:
    """Every backend, in METER_NAMES order, with why it is unavailable or what it would measure."""
    check_watts(watts_per_core, "watts_per_core")
    check_watts(idle_watts_per_core, "idle_watts_per_core", allow_zero=True)
    cpu = CpuModelSettings(watts_per_core, idle_watts_per_core)
    statuses = []
    for name in METER_NAMES:
        try:
            meter = _build(name, cpu=cpu, rapl_root=rapl_root)
        except MeterUnavailable as e:
            statuses.append(MeterStatus(name, False, _SOURCES[name], str(e)))
            continue
        try:
            details = meter.describe()
        finally:
            meter.close()
        statuses.append(MeterStatus(name, True, _SOURCES[name], "", details))
    return statuses


def check_watts(watts: float | None, what: str, *, allow_zero: bool = False) -> None:
    """One line naming `what` (a flag or argument) unless `watts` is None or a finite number > 0 (>= 0)."""
    if watts is None:
        return
    if isinstance(watts, bool) or not isinstance(watts, (int, float)):
        raise GreenlmError(f"{what} must be a number of watts, got {watts!r}")
    if not (math.isfinite(watts) and (watts >= 0 if allow_zero else watts > 0)):
        raise GreenlmError(
            f"{what} must be a finite number of watts {'>= 0' if allow_zero else '> 0'}, got {watts}"
        )


def _cpu_model_note(cpu: CpuModelMeter) -> str:
    return (
        f"cpu-model: {cpu.idle_watts_per_core:.3g} W per allotted core for every second ({cpu.idle_source}) "
        f"+ {cpu.dynamic_watts_per_core:.3g} W per busy core (watts per core: {cpu.watts_source})"
    )


def _auto(*, cpu_settings: CpuModelSettings, rapl_root: str) -> tuple[Meter, str]:
    """The CPU (RAPL, else the cpu-model estimate) and, when NVML sees one, the GPUs, read as one meter.

    A GPU machine runs CPU work too (tokenizing, sampling, a CPU engine), and an idle GPU still draws
    power, so both are always counted; each domain of the record says which meter produced it.
    """
    why_not: list[str] = []
    try:
        cpu: Meter = RaplMeter(rapl_root)
    except MeterUnavailable as e:
        why_not.append(f"no RAPL: {e}")
        cpu = _build("cpu-model", cpu=cpu_settings, rapl_root=rapl_root)
    try:
        gpu: Meter | None = NvmlMeter()
    except MeterUnavailable as e:
        why_not.append(f"no NVML: {e}")
        gpu = None
    except BaseException:
        cpu.close()
        raise
    meter = cpu if gpu is None else CompositeMeter([cpu, gpu])
    if gpu is None:
        kind = f"{cpu.name} ({cpu.energy_source})"
    else:
        kind = (
            f"{meter.name} ({meter.energy_source}: CPU {cpu.energy_source} by {cpu.name}, "
            f"GPU {gpu.energy_source} by nvml)"
        )
    note = f"meter: {kind}"
    if why_not:
        note += " — " + "; ".join(why_not)
    if isinstance(cpu, CpuModelMeter):
        note += "; " + _cpu_model_note(cpu)
    return meter, note


def meter_names(spec: str) -> list[str]:
    """The meters a spec names (["auto"] for auto), or one line saying what is wrong with it: checked before
    any work, whether or not this machine has them."""
    key = spec.strip().lower() if isinstance(spec, str) else ""
    if key == "auto":
        return [key]
    names = key.split("+")
    if not all(n in METER_NAMES for n in names) or len(set(names)) != len(names):
        raise GreenlmError(f"unknown meter {spec!r}: choose one of {_VALID_SPECS}")
    if "rapl" in names and "cpu-model" in names:
        raise GreenlmError("rapl and cpu-model both count the CPU, so together they double count: choose one")
    return names


def get_meter(
    spec: str = "auto",
    *,
    watts_per_core: float | None = None,
    idle_watts_per_core: float | None = None,
    include_children: bool = False,
    rapl_root: str = POWERCAP_ROOT,
) -> Meter:
    """The meter for `spec`; the result's selection_note says what was chosen and why.

    "auto": the CPU by RAPL when present, else by the cpu-model estimate, plus NVML's GPUs when present
    (rapl+nvml, cpu-model+nvml, rapl or cpu-model). A named spec forces that meter and raises
    MeterUnavailable, with the reason, when this machine lacks it.
    watts_per_core, idle_watts_per_core and include_children are used only by cpu-model.
    """
    check_watts(watts_per_core, "watts_per_core")
    check_watts(idle_watts_per_core, "idle_watts_per_core", allow_zero=True)
    cpu = CpuModelSettings(watts_per_core, idle_watts_per_core, include_children)
    key = spec.strip().lower()
    if key == "auto":
        meter, note = _auto(cpu_settings=cpu, rapl_root=rapl_root)
        meter.selection_note = note
        return meter
    names = meter_names(spec)
    meters: list[Meter] = []
    try:
        for name in names:
            meters.append(_build(name, cpu=cpu, rapl_root=rapl_root))
    except BaseException:
        for m in meters:
            m.close()
        raise
    meter = meters[0] if len(meters) == 1 else CompositeMeter(meters)
    note = f"meter: {meter.name} ({meter.energy_source}), as requested"
    if names == ["nvml"]:
        note += "; CPU energy is not counted (auto, or nvml+cpu-model, counts it)"
    meter.selection_note = note
    return meter
