"""An estimate for machines with no energy counters: the cores this process holds, its CPU time, and memory.

    cpu-static  = idle_watts_per_core x allotted cores x wall seconds
    cpu-dynamic = (watts_per_core - idle_watts_per_core) x busy core-seconds
    memory      = mean RSS in GB x memory_w_per_gb x wall seconds

    energy_j["cpu"] = cpu-static + cpu-dynamic (detail_j holds the two parts); energy_j["memory"] as above.

* allotted cores: the CPUs in this process's affinity mask, in physical cores (an SMT sibling counts as
  1 / (threads of its core), from sysfs thread_siblings_list). A package draws static power for every
  wall-clock second whether the work keeps a core busy or not, so a run that takes longer pays for it:
  one thread for twice as long no longer costs the same as two threads for half the time.
* busy core-seconds: user + system CPU seconds of this process (and of its reaped children; with
  include_children=True of its live descendants too) times the mask's physical cores per logical CPU.
* watts_per_core: what one fully busy physical core draws: the part's TDP / its physical cores when both
  are known (cpuinfo.py says how the core count is found, and why a VM guest's count is never used), else
  DEFAULT_WATTS_PER_CORE. idle_watts_per_core: IDLE_TO_FULL_RATIO of it unless given.

Everything it returns is labelled "estimated", and describe() says where every constant came from.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import psutil

from greenlm.energy.base import EnergySource, Measurement, Meter, Reading, window_duration_s
from greenlm.energy.cpuinfo import (
    CoreShare,
    allowed_cpus,
    codecarbon_cpu_table_path,
    core_share,
    lookup_tdp,
    read_cpu_info,
    smt_siblings,
)
from greenlm.errors import GreenlmError

try:
    import resource
except ImportError:  # not a Unix: psutil reads this process like any other
    resource = None

# Unknown CPU (or unknown core count): TDP / physical cores of common parts in codecarbon's table cluster
# around 5-10 W (Xeon Gold 6248 150 W/20 = 7.5; Xeon Platinum 8380 270/40 = 6.8; EPYC 7502 180/32 = 5.6;
# Core i7-10750H 45/6 = 7.5; Ryzen 9 5950X 105/16 = 6.6; Core i7-12700K 125/12 = 10.4).
# 7.5 W is the middle of that cluster (TDPs from codecarbon's cpu_power.csv, core counts from the vendors).
DEFAULT_WATTS_PER_CORE = 7.5
DEFAULT_WATTS_SOURCE = "default 7.5 W: middle of TDP/cores of common server and desktop parts"

# Idle power as a fraction of full-load power. Cloud Carbon Footprint's methodology
# (cloudcarbonfootprint.org/docs/methodology, "Compute") derives per-vCPU "Min Watts" (active idle) and
# "Max Watts" (100% load) from SPECpower_ssj2008 results; its average over the CPU micro-architectures AWS
# uses is 0.74 W and 3.5 W: 0.74 / 3.5 = 0.21. SPECpower measures whole-server wall power, so applying the
# ratio to a CPU package's TDP is an assumption (a package alone idles lower, a whole server higher).
IDLE_TO_FULL_RATIO = 0.74 / 3.5
IDLE_SOURCE = (
    "0.21 x watts per core: idle/full-load ratio 0.74 W / 3.5 W per vCPU, Cloud Carbon Footprint's average "
    "over AWS CPU micro-architectures from SPECpower_ssj2008 results (whole-server power; assumed to hold "
    "for the CPU package)"
)

# 3 W per 8 GB of DDR3/DDR4 (Crucial's rule of thumb, also codecarbon's and Cloud Carbon Footprint's).
# GB as on the DIMM label (2**30 B).
DEFAULT_MEMORY_W_PER_GB = 3.0 / 8.0
MEMORY_SOURCE = "3 W per 8 GB of DDR3/DDR4 (Crucial's rule of thumb, as codecarbon uses), on resident memory"
BYTES_PER_GB = 2**30

# Domain names. "cpu" and "memory" are additive; the two parts of "cpu" are details inside it.
STATM = "/proc/self/statm"
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
STATIC_DOMAIN = "cpu-static"
DYNAMIC_DOMAIN = "cpu-dynamic"


def _positive(value: float, what: str, *, allow_zero: bool = False) -> float:
    ok = (
        not isinstance(value, bool)
        and isinstance(value, (int, float))
        and math.isfinite(value)
        and (value >= 0 if allow_zero else value > 0)
    )
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise GreenlmError(f"{what} must be a finite number {bound}, got {value!r}")
    return float(value)


class CpuModelMeter(Meter):
    name = "cpu-model"
    energy_source: EnergySource = "estimated"

    def __init__(
        self,
        watts_per_core: float | None = None,
        memory_w_per_gb: float = DEFAULT_MEMORY_W_PER_GB,
        *,
        idle_watts_per_core: float | None = None,
        include_children: bool = False,
        pid: int | None = None,
    ) -> None:
        """`watts_per_core`: a fully busy physical core; `idle_watts_per_core`: an idle one (both default
        from the CPU, see the module docstring). `include_children`: also count the CPU time and memory of
        live descendant processes (reaped children are always counted), for tracking a command this process
        started. `pid`: meter another process (default this one)."""
        self.memory_w_per_gb = _positive(memory_w_per_gb, "memory_w_per_gb", allow_zero=True)
        self.include_children = bool(include_children)
        try:
            self._process = psutil.Process(pid)
        except psutil.Error as e:
            raise GreenlmError(f"cannot meter process {pid}: {e}") from None
        # this process itself: read its CPU clock (ns resolution, no /proc parsing) and its resident memory
        # through one open file, so a window edge costs microseconds (a server closes one per engine step)
        self._own = resource is not None and self._process.pid == os.getpid()
        self._statm = os.open(STATM, os.O_RDONLY) if self._own and os.path.exists(STATM) else None
        info = read_cpu_info()
        self.cpu_brand = info.brand
        self.cores_per_package = info.cores_per_package
        self.cores_source = info.cores_source
        self.virtual = info.virtual
        self._siblings, self.smt_source = smt_siblings()
        self.watts_per_core, self.watts_source = self._full_watts(watts_per_core, info)
        if idle_watts_per_core is None:
            self.idle_watts_per_core = IDLE_TO_FULL_RATIO * self.watts_per_core
            self.idle_source = IDLE_SOURCE
        else:
            self.idle_watts_per_core = _positive(idle_watts_per_core, "idle_watts_per_core", allow_zero=True)
            self.idle_source = "user override (--idle-watts-per-core)"
        if self.idle_watts_per_core > self.watts_per_core:
            raise GreenlmError(
                f"idle watts per core ({self.idle_watts_per_core:g}) exceed the watts of a busy core "
                f"({self.watts_per_core:g}, {self.watts_source}): lower --idle-watts-per-core or raise "
                "--watts-per-core"
            )

    @staticmethod
    def _full_watts(override: float | None, info) -> tuple[float, str]:
        if override is not None:
            return _positive(override, "watts_per_core"), "user override (--watts-per-core)"
        table = codecarbon_cpu_table_path()
        entry = lookup_tdp(info.brand, table) if table is not None else None
        if table is None:
            return DEFAULT_WATTS_PER_CORE, f"{DEFAULT_WATTS_SOURCE} (codecarbon cpu_power.csv not found)"
        if entry is None:
            return DEFAULT_WATTS_PER_CORE, f"{DEFAULT_WATTS_SOURCE} (CPU '{info.brand}' not in cpu_power.csv)"
        if not info.cores_per_package:
            return DEFAULT_WATTS_PER_CORE, (
                f"{DEFAULT_WATTS_SOURCE} ({entry.name} TDP {entry.tdp_w:g} W is known, its core count is "
                f"{info.cores_source})"
            )
        return entry.tdp_w / info.cores_per_package, (
            f"codecarbon cpu_power.csv: {entry.name} TDP {entry.tdp_w:g} W / {info.cores_per_package} "
            f"physical cores ({info.cores_source})"
        )

    @property
    def dynamic_watts_per_core(self) -> float:
        return self.watts_per_core - self.idle_watts_per_core

    def share(self) -> CoreShare:
        """The cores the metered process may use now, in physical cores."""
        return core_share(allowed_cpus(self._process.pid), self._siblings, self.smt_source)

    def _tree(self) -> list[psutil.Process]:
        try:
            return self._process.children(recursive=True)
        except psutil.Error:
            return []

    def _own_cpu_and_rss(self) -> tuple[float, float]:
        """CPU seconds of this process (every thread, and its reaped children) and its resident bytes."""
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_s = time.process_time() + children.ru_utime + children.ru_stime
        if self._statm is None:
            return cpu_s, float(self._process.memory_info().rss)
        resident_pages = int(os.pread(self._statm, 128, 0).split()[1])  # statm: size resident shared ...
        return cpu_s, float(resident_pages * PAGE_BYTES)

    def close(self) -> None:
        if self._statm is not None:
            os.close(self._statm)
            self._statm = None

    def read(self) -> Reading:
        if self._own and os.getpid() == self._process.pid:  # (a forked child reads its parent through psutil)
            cpu_s, rss_bytes = self._own_cpu_and_rss()
        else:
            with self._process.oneshot():
                t = self._process.cpu_times()
                rss_bytes = float(self._process.memory_info().rss)
            # children_*: children this process has reaped (waited for), with everything they reaped in turn.
            cpu_s = t.user + t.system + getattr(t, "children_user", 0.0) + getattr(t, "children_system", 0.0)
        if self.include_children:
            # Live descendants: their own time and what they reaped. A descendant is counted here while it
            # runs and in its parent's children_* once reaped, never both at one instant.
            for child in self._tree():
                try:
                    with child.oneshot():
                        ct = child.cpu_times()
                        child_rss = child.memory_info().rss
                except psutil.Error:  # exited between listing and reading: its time moves to its parent
                    continue
                cpu_s += ct.user + ct.system + getattr(ct, "children_user", 0.0)
                cpu_s += getattr(ct, "children_system", 0.0)
                rss_bytes += child_rss
        share = self.share()
        return Reading(
            time_s=time.perf_counter(),
            values={
                "cpu_s": cpu_s,
                "rss_bytes": rss_bytes,
                "core_equivalents": share.core_equivalents,
                "core_fraction": share.core_fraction,
            },
        )

    def measure(self, start: Reading, end: Reading) -> Measurement:
        duration_s = window_duration_s(start, end)
        # CPU time only grows; a dip (a live child re-parented away) is never negative work.
        cpu_s = max(0.0, end.values["cpu_s"] - start.values["cpu_s"])
        # Two edge samples: the trapezoid is the mean we can know without polling (RSS, and the affinity
        # mask, which a process may change mid-window).
        cores = (start.values["core_equivalents"] + end.values["core_equivalents"]) / 2
        fraction = (start.values["core_fraction"] + end.values["core_fraction"]) / 2
        mean_rss_gb = (start.values["rss_bytes"] + end.values["rss_bytes"]) / 2 / BYTES_PER_GB
        static_j = self.idle_watts_per_core * cores * duration_s
        dynamic_j = self.dynamic_watts_per_core * cpu_s * fraction
        return Measurement(
            meter=self.name,
            energy_source=self.energy_source,
            duration_s=duration_s,
            energy_j={"cpu": static_j + dynamic_j, "memory": mean_rss_gb * self.memory_w_per_gb * duration_s},
            detail_j={STATIC_DOMAIN: static_j, DYNAMIC_DOMAIN: dynamic_j},
        )

    def describe(self) -> dict[str, Any]:
        share = self.share()
        return {
            **super().describe(),
            "domains": ["cpu", "memory"],
            "details": [STATIC_DOMAIN, DYNAMIC_DOMAIN],
            "formula": (
                "cpu = idle_watts_per_core x allotted cores x wall s + (watts_per_core - idle_watts_per_core)"
                " x busy core-s; memory = mean RSS GB x memory_w_per_gb x wall s"
            ),
            "cpu": self.cpu_brand,
            "virtual_machine": self.virtual,
            "cores_per_package": self.cores_per_package,
            "cores_source": self.cores_source,
            "watts_per_core": self.watts_per_core,
            "watts_source": self.watts_source,
            "static": {
                "idle_watts_per_core": self.idle_watts_per_core,
                "allotted_cpus": share.logical_cpus,
                "allotted_cores": share.core_equivalents,
                "power_w": self.idle_watts_per_core * share.core_equivalents,
                "source": self.idle_source,
                "cores_counted": (
                    f"the process's CPU affinity, an SMT sibling as 1/(threads of its core) ({share.source})"
                ),
            },
            "dynamic": {
                "watts_per_busy_core": self.dynamic_watts_per_core,
                "source": f"watts_per_core - idle_watts_per_core; watts_per_core: {self.watts_source}",
                "busy_time": "user + system CPU seconds x physical cores per logical CPU of the mask",
            },
            "memory_w_per_gb": self.memory_w_per_gb,
            "memory_source": MEMORY_SOURCE,
            "scope": (
                "CPU time of this process and its reaped children"
                + (", and of its live descendants" if self.include_children else "")
                + "; static power of the cores it may use; other processes and the rest of the machine "
                "not included"
            ),
        }
