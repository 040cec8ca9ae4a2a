"""Stand-ins for energy hardware: a powercap sysfs tree on disk, a pynvml module, a settable meter."""

from __future__ import annotations

import os
import time
import types
from collections.abc import Callable
from pathlib import Path

from greenlm.energy.base import EnergySource, Measurement, Meter, Reading, window_duration_s

INTEL_RANGE_UJ = 262_143_328_850  # what a real Intel package zone reports


class FakePowercap:
    """Writes intel-rapl zones the way sysfs lays them out: flat `intel-rapl:N[:M]` entries under root."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def zone(self, zone: str, name: str, energy_uj: int = 0, max_range_uj: int = INTEL_RANGE_UJ) -> str:
        path = self.root / zone
        path.mkdir()
        (path / "name").write_text(name + "\n")
        (path / "max_energy_range_uj").write_text(f"{max_range_uj}\n")
        self.set(zone, energy_uj)
        return zone

    def set(self, zone: str, energy_uj: int) -> None:
        # Atomic like sysfs: a reader (the wrap-guard thread) never sees a half-written counter.
        path = self.root / zone / "energy_uj"
        tmp = path.with_name("energy_uj.tmp")
        tmp.write_text(f"{energy_uj}\n")
        os.replace(tmp, path)

    def add(self, zone: str, delta_uj: int) -> None:
        path = self.root / zone / "energy_uj"
        self.set(zone, int(path.read_text()) + delta_uj)


class FakeGpu:
    def __init__(
        self,
        name: str = "NVIDIA H100 80GB HBM3",
        energy_mj: int | None = 0,  # None: no energy counter (pre-Volta)
        power_w: Callable[[], float] | float = 100.0,
    ) -> None:
        self.name = name
        self.energy_mj = energy_mj
        self.power_w = power_w

    def power_mw(self) -> int:
        watts = self.power_w() if callable(self.power_w) else self.power_w
        return round(watts * 1000)


def make_pynvml(gpus: list[FakeGpu], *, init_error: int | None = None) -> types.ModuleType:
    """A module with the slice of pynvml's API that NvmlMeter uses, errors included."""
    mod = types.ModuleType("pynvml")

    class NVMLError(Exception):
        def __init__(self, value: int) -> None:
            super().__init__(value)
            self.value = value

        def __str__(self) -> str:
            return {1: "Uninitialized", 3: "Not Supported", 12: "NVML Shared Library Not Found"}.get(
                self.value, f"error {self.value}"
            )

    class NVMLError_NotSupported(NVMLError):  # noqa: N801 (pynvml's name)
        def __init__(self) -> None:
            super().__init__(3)

    mod.NVMLError = NVMLError
    mod.NVMLError_NotSupported = NVMLError_NotSupported
    mod.calls = {"init": 0, "shutdown": 0, "power": 0}

    def nvmlInit() -> None:
        mod.calls["init"] += 1
        if init_error is not None:
            raise NVMLError(init_error)

    def nvmlShutdown() -> None:
        mod.calls["shutdown"] += 1

    def nvmlDeviceGetTotalEnergyConsumption(handle: int) -> int:
        gpu = gpus[handle]
        if gpu.energy_mj is None:
            raise NVMLError_NotSupported()
        return gpu.energy_mj

    def nvmlDeviceGetPowerUsage(handle: int) -> int:
        mod.calls["power"] += 1
        return gpus[handle].power_mw()

    mod.nvmlInit = nvmlInit
    mod.nvmlShutdown = nvmlShutdown
    mod.nvmlSystemGetDriverVersion = lambda: "550.54.15"
    mod.nvmlDeviceGetCount = lambda: len(gpus)
    mod.nvmlDeviceGetHandleByIndex = lambda i: i
    mod.nvmlDeviceGetName = lambda h: gpus[h].name.encode()  # old pynvml returns bytes
    mod.nvmlDeviceGetTotalEnergyConsumption = nvmlDeviceGetTotalEnergyConsumption
    mod.nvmlDeviceGetPowerUsage = nvmlDeviceGetPowerUsage
    return mod


class CounterMeter(Meter):
    """A meter over plain counters in joules that a test bumps by hand."""

    def __init__(self, name: str, domains: list[str], source: EnergySource = "measured") -> None:
        self.name = name
        self.energy_source = source
        self.counter_j = {d: 0.0 for d in domains}
        self.closed = 0

    def read(self) -> Reading:
        return Reading(time.perf_counter(), dict(self.counter_j))

    def measure(self, start: Reading, end: Reading) -> Measurement:
        energy_j = {d: end.values[d] - start.values[d] for d in self.counter_j}
        return Measurement(self.name, self.energy_source, window_duration_s(start, end), energy_j)

    def close(self) -> None:
        self.closed += 1
