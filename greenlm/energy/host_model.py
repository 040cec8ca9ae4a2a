"""The cpu-model estimate of a whole machine, for a host with no energy counter (`greenlm meter-agent` with no
pid): the formula of `cpu_model` over every CPU and all the machine's work.

    cpu-static  = idle_watts_per_core x every core x wall seconds
    cpu-dynamic = (watts_per_core - idle_watts_per_core) x busy core-seconds of the machine
                  (user + nice + system + irq + softirq CPU time of all processes; steal and idle not)
    memory      = used memory in GB x memory_w_per_gb x wall seconds
"""

from __future__ import annotations

import time
from typing import Any

import psutil

from greenlm.energy.base import Reading
from greenlm.energy.cpu_model import CpuModelMeter
from greenlm.energy.cpuinfo import CoreShare, core_share


class HostCpuModelMeter(CpuModelMeter):
    def __init__(self, watts_per_core: float | None = None, *, idle_watts_per_core: float | None = None):
        super().__init__(watts_per_core, idle_watts_per_core=idle_watts_per_core)

    def share(self) -> CoreShare:
        cpus = list(range(psutil.cpu_count(logical=True) or 1))
        return core_share(cpus, self._siblings, self.smt_source)

    def read(self) -> Reading:
        t = psutil.cpu_times()
        busy_s = t.user + t.system + sum(getattr(t, k, 0.0) for k in ("nice", "irq", "softirq"))
        share = self.share()
        return Reading(
            time_s=time.perf_counter(),
            values={
                "cpu_s": busy_s,
                "rss_bytes": float(psutil.virtual_memory().used),
                "core_equivalents": share.core_equivalents,
                "core_fraction": share.core_fraction,
            },
        )

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["static"]["cores_counted"] = (
            f"every CPU of the machine, an SMT sibling as 1/(threads of its core) ({self.smt_source})"
        )
        d["scope"] = (
            "the whole machine: the busy CPU time of every process, the static power of every core, the memory in use"
        )
        return d
