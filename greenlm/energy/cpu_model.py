"""An estimate for machines with no energy counters: this process's CPU seconds and memory, times watts.

    energy_j["cpu"]    = busy CPU seconds (user + system, all threads, reaped children) x watts per core
    energy_j["memory"] = mean RSS in GB x memory_w_per_gb x seconds

It counts only this process, not the idle floor of the machine, so it answers "what did this work
cost" rather than "what did the wall socket see". Everything it returns is labelled "estimated".
"""

from __future__ import annotations

import math
import time
from typing import Any

import psutil

from greenlm.energy.base import EnergySource, Measurement, Meter, Reading, window_duration_s
from greenlm.energy.cpuinfo import codecarbon_cpu_table_path, lookup_tdp, read_cpu_info
from greenlm.errors import GreenlmError

# Unknown CPU: TDP / physical cores of common parts in codecarbon's table clusters around 5-10 W
# (Xeon Gold 6248 150 W/20 = 7.5; Xeon Platinum 8380 270/40 = 6.8; EPYC 7502 180/32 = 5.6;
# Core i7-10750H 45/6 = 7.5; Ryzen 9 5950X 105/16 = 6.6; Core i7-12700K 125/12 = 10.4).
# 7.5 W is the middle of that cluster.
DEFAULT_WATTS_PER_CORE = 7.5

# codecarbon's long-standing convention of 3 W per 8 GB of DDR3/DDR4. GB as on the DIMM label (2**30 B).
DEFAULT_MEMORY_W_PER_GB = 3.0 / 8.0
BYTES_PER_GB = 2**30


def _positive(value: float, what: str, *, allow_zero: bool = False) -> float:
    ok = math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise GreenlmError(f"{what} must be a finite number {bound}, got {value}")
    return float(value)


class CpuModelMeter(Meter):
    name = "cpu-model"
    energy_source: EnergySource = "estimated"

    def __init__(
        self,
        watts_per_core: float | None = None,
        memory_w_per_gb: float = DEFAULT_MEMORY_W_PER_GB,
    ) -> None:
        self.memory_w_per_gb = _positive(memory_w_per_gb, "memory_w_per_gb", allow_zero=True)
        self._process = psutil.Process()
        info = read_cpu_info()
        self.cpu_brand = info.brand
        self.cores_per_package = info.cores_per_package
        if watts_per_core is not None:
            self.watts_per_core = _positive(watts_per_core, "watts_per_core")
            self.watts_source = "user override"
            return
        table = codecarbon_cpu_table_path()
        entry = lookup_tdp(info.brand, table) if table is not None else None
        self.watts_per_core = DEFAULT_WATTS_PER_CORE
        if table is None:
            self.watts_source = "default (codecarbon cpu_power.csv not found)"
        elif entry is None:
            self.watts_source = "default (unknown CPU)"
        elif not info.cores_per_package:
            self.watts_source = f"default ({entry.name} known, but not its core count)"
        else:
            self.watts_per_core = entry.tdp_w / info.cores_per_package
            self.watts_source = (
                f"codecarbon cpu_power.csv: {entry.name} TDP {entry.tdp_w:g} W"
                f" / {info.cores_per_package} cores"
            )

    def read(self) -> Reading:
        with self._process.oneshot():
            t = self._process.cpu_times()
            rss_bytes = self._process.memory_info().rss
        cpu_s = t.user + t.system + getattr(t, "children_user", 0.0) + getattr(t, "children_system", 0.0)
        return Reading(
            time_s=time.perf_counter(),
            values={"cpu_s": cpu_s, "rss_bytes": float(rss_bytes)},
        )

    def measure(self, start: Reading, end: Reading) -> Measurement:
        duration_s = window_duration_s(start, end)
        # CPU time only grows; a dip would be a clock quirk, never negative work.
        cpu_s = max(0.0, end.values["cpu_s"] - start.values["cpu_s"])
        # Two edge samples: the trapezoid is the mean RSS we can know without polling.
        mean_rss_gb = (start.values["rss_bytes"] + end.values["rss_bytes"]) / 2 / BYTES_PER_GB
        return Measurement(
            meter=self.name,
            energy_source=self.energy_source,
            duration_s=duration_s,
            energy_j={
                "cpu": cpu_s * self.watts_per_core,
                "memory": mean_rss_gb * self.memory_w_per_gb * duration_s,
            },
        )

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "domains": ["cpu", "memory"],
            "cpu": self.cpu_brand,
            "cores_per_package": self.cores_per_package,
            "watts_per_core": self.watts_per_core,
            "watts_source": self.watts_source,
            "memory_w_per_gb": self.memory_w_per_gb,
            "memory_source": "codecarbon convention: 3 W per 8 GB of RAM, applied to this process's RSS",
            "scope": "this process and its reaped children; machine idle power not included",
        }
