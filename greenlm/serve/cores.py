"""How much CPU a server holds: `CoreAllotment` shrinks the process's CPU affinity (every thread of it, as
Linux sets affinity per thread) to the first N CPUs it started with, and restores it on close. The cpu-model
meter charges static power for the CPUs in that mask, so a smaller mask in quiet hours is a smaller bill there;
on real hardware the freed core can idle deeper or serve another tenant."""

from __future__ import annotations

import os
from collections.abc import Callable


class CoreAllotment:
    """The CPUs this process may run on, shrunk or restored for every thread of it."""

    def __init__(self, set_affinity: Callable[[int, list[int]], None] | None = None):
        try:
            self.initial = sorted(os.sched_getaffinity(os.getpid()))
        except AttributeError:  # not Linux: nothing to change
            self.initial = list(range(os.cpu_count() or 1))
        self._set = set_affinity or _set_process_affinity
        self.cores = len(self.initial)

    @property
    def max_cores(self) -> int:
        return len(self.initial)

    def set(self, cores: int) -> list[int]:
        cores = max(1, min(int(cores), self.max_cores))
        cpus = self.initial[:cores]
        self._set(os.getpid(), cpus)
        self.cores = cores
        return cpus

    def restore(self) -> None:
        if self.cores != self.max_cores:
            self.set(self.max_cores)


def _set_process_affinity(pid: int, cpus: list[int]) -> None:
    """Linux keeps an affinity mask per thread: set it on each (threads started later inherit it)."""
    if not hasattr(os, "sched_setaffinity"):
        return
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        tids = [pid]
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cpus)
        except (ProcessLookupError, PermissionError):  # a thread that just ended
            continue
