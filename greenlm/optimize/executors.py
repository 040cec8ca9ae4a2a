"""Where candidate evaluations run: in this process (default), or as Ray tasks on a cluster.

Both take a callable `work(candidate, front) -> row` (a `CandidateRow`) and call `on_result(row)` in the driver
as each finishes, so the store is written by one process and a crash loses at most the candidates in flight.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from greenlm.cluster import init_ray
from greenlm.errors import GreenlmError
from greenlm.optimize.row import CandidateRow
from greenlm.optimize.space import Candidate

Work = Callable[[Candidate, list[CandidateRow]], CandidateRow]
OnResult = Callable[[CandidateRow], None]
Front = Callable[[], list[CandidateRow]]
KeepGoing = Callable[[], bool]


class LocalExecutor:
    name = "local"

    def run(
        self, candidates: Iterable, work: Work, front: Front, on_result: OnResult, keep_going: KeepGoing
    ) -> None:
        for candidate in candidates:
            if not keep_going():
                return
            on_result(work(candidate, front()))


class RayExecutor:
    """One Ray task per candidate, each asking for the CPUs (and GPU) it will use; energy is measured on
    the worker that ran the candidate, and its record names that host."""

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        *,
        cpus_per_task: float = 1,
        gpus_per_task: float = 0,
        max_in_flight: int | None = None,
    ):
        try:
            import ray
        except ImportError:
            raise GreenlmError("--executor ray needs Ray: pip install 'greenlm[ray]'") from None
        self.ray = ray
        init_ray(address, ignore_reinit_error=True)
        self.cpus_per_task = cpus_per_task
        self.gpus_per_task = gpus_per_task
        total_cpus = int(ray.cluster_resources().get("CPU", 1))
        self.max_in_flight = max_in_flight or max(1, int(total_cpus // max(cpus_per_task, 1)))

    def run(
        self, candidates: Iterable, work: Work, front: Front, on_result: OnResult, keep_going: KeepGoing
    ) -> None:
        remote = self.ray.remote(num_cpus=self.cpus_per_task, num_gpus=self.gpus_per_task, max_retries=0)(
            work
        )
        pending = list(candidates)
        in_flight = []
        while pending or in_flight:
            while pending and len(in_flight) < self.max_in_flight and keep_going():
                in_flight.append(remote.remote(pending.pop(0), front()))
            if not in_flight:
                return
            done, in_flight = self.ray.wait(in_flight, num_returns=1)
            try:
                on_result(self.ray.get(done[0]))
            except self.ray.exceptions.RayTaskError as exc:
                cause = exc.cause if getattr(exc, "cause", None) is not None else exc
                if isinstance(cause, GreenlmError):
                    raise cause from None
                raise
            if not keep_going():
                pending.clear()


def make_executor(
    name: str, address: str | None = None, *, cpus_per_task: float = 1, gpus_per_task: float = 0
) -> LocalExecutor | RayExecutor:
    if name == "local":
        if address:
            raise GreenlmError("--ray-address only makes sense with --executor ray")
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(address, cpus_per_task=cpus_per_task, gpus_per_task=gpus_per_task)
    raise GreenlmError(f"unknown executor '{name}': use local or ray")
