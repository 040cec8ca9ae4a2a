"""The carbon-aware planner: pure functions over small lists, no clock, no threads, no I/O.

Inputs: a forecast of the grid's carbon intensity cut into slots (start, end, g/kWh), the jobs that can wait
(each its work left in tokens and its deadline), the capacity left beside interactive load (tokens per second
at a full batch) and the served variant's measured J per token. Output: a `Plan`, the tokens each job runs in
each slot; a job runs now when the plan gives it tokens in the slot that holds `now`.

The rule. Jobs are taken in deadline order (earliest first); each takes the cleanest capacity still free
before its deadline, the earlier slot first among equally clean ones. Every job may start now, so a later
deadline only adds slots to a job's choice; giving an earlier job its cleanest slot can always be swapped with
a later job at no cost, and the plan has the least expected carbon of all plans that meet the deadlines (when
they can be met). Work that cannot fit before its deadline takes the earliest capacity left and is marked
late: deferred work never starves. `plan_asap` is the baseline it is judged against: everything as soon as
capacity allows, in deadline order (what running on arrival does).

Times are seconds on one clock (the grid's: a replayed trace's own time, or Unix time for a live provider).
A job may have a release time (planning a day of arrivals at once, as a benchmark's reference does): it then
uses only slots after it, and the plan is a good one, no longer provably the least.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from greenlm.energy.carbon import carbon_g

TOKEN_EPS = 1e-6  # tokens below this are rounding, not work


@dataclass(frozen=True)
class Slot:
    start_s: float
    end_s: float
    intensity_g_per_kwh: float

    def __post_init__(self) -> None:
        if not (self.end_s > self.start_s):
            raise ValueError(f"a slot must end after it starts: {self.start_s} .. {self.end_s}")
        if not (math.isfinite(self.intensity_g_per_kwh) and self.intensity_g_per_kwh >= 0):
            raise ValueError(f"slot intensity must be finite and >= 0, got {self.intensity_g_per_kwh}")


@dataclass(frozen=True)
class Job:
    id: str
    tokens: float  # work left, in tokens (prompt + at most max_tokens of output for each request left)
    deadline_s: float
    kind: str = "batch"  # batch | flex | training (only labels)
    release_s: float = -math.inf  # not before this (a job not yet arrived: for planning a whole day at once)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.tokens) and self.tokens >= 0):
            raise ValueError(f"job {self.id}: tokens must be finite and >= 0, got {self.tokens}")


@dataclass(frozen=True)
class Allocation:
    job_id: str
    slot: int  # index into Plan.slots
    tokens: float


@dataclass
class Plan:
    """Tokens per (job, slot), with what the plan expects to emit."""

    now_s: float
    slots: list[Slot]
    allocations: list[Allocation]
    capacity_tokens_per_s: float
    j_per_token: float
    pue: float = 1.0
    late_jobs: list[str] = field(default_factory=list)  # jobs whose work does not fit before their deadline
    rule: str = "cleanest"  # cleanest | asap

    def job_tokens(self, job_id: str) -> float:
        return sum(a.tokens for a in self.allocations if a.job_id == job_id)

    def now_slot(self) -> int | None:
        """The index of the slot that holds `now_s`."""
        for i, s in enumerate(self.slots):
            if s.start_s <= self.now_s < s.end_s:
                return i
        return None

    def runs_now(self, job_id: str) -> bool:
        """Whether the plan gives `job_id` work in the slot that holds now."""
        i = self.now_slot()
        return i is not None and any(
            a.job_id == job_id and a.slot == i and a.tokens > TOKEN_EPS for a in self.allocations
        )

    def next_run_s(self, job_id: str) -> float | None:
        """When the job's first planned work starts (now, if it runs now)."""
        starts = [
            max(self.slots[a.slot].start_s, self.now_s)
            for a in self.allocations
            if a.job_id == job_id and a.tokens > TOKEN_EPS
        ]
        return min(starts) if starts else None

    def finish_s(self, job_id: str) -> float | None:
        """When the job's last planned slot ends (an upper bound on its finish)."""
        ends = [
            self.slots[a.slot].end_s for a in self.allocations if a.job_id == job_id and a.tokens > TOKEN_EPS
        ]
        return max(ends) if ends else None

    def carbon_g(self, job_id: str | None = None) -> float:
        """Expected carbon of the plan (of one job): each allocation's tokens x J/token at its slot's
        forecast intensity."""
        total = 0.0
        for a in self.allocations:
            if job_id is None or a.job_id == job_id:
                total += carbon_g(
                    a.tokens * self.j_per_token, self.slots[a.slot].intensity_g_per_kwh, self.pue
                )
        return total

    def energy_j(self) -> float:
        return sum(a.tokens for a in self.allocations) * self.j_per_token

    def tokens_by_slot(self) -> list[float]:
        out = [0.0] * len(self.slots)
        for a in self.allocations:
            out[a.slot] += a.tokens
        return out

    def to_dict(self, *, max_slots: int | None = None) -> dict:
        """JSON-ready: the slots with their planned tokens (the first `max_slots`), the expected carbon."""
        per_slot = self.tokens_by_slot()
        slots = [
            {
                "start_s": s.start_s,
                "end_s": s.end_s,
                "intensity_g_per_kwh": s.intensity_g_per_kwh,
                "tokens": per_slot[i],
                "jobs": sorted({a.job_id for a in self.allocations if a.slot == i and a.tokens > TOKEN_EPS}),
            }
            for i, s in enumerate(self.slots[:max_slots] if max_slots else self.slots)
        ]
        return {
            "rule": self.rule,
            "now_s": self.now_s,
            "capacity_tokens_per_s": self.capacity_tokens_per_s,
            "j_per_token": self.j_per_token,
            "expected_energy_j": self.energy_j(),
            "expected_carbon_g": self.carbon_g(),
            "late_jobs": list(self.late_jobs),
            "slots": slots,
        }


def _usable_s(slot: Slot, now_s: float, until_s: float) -> float:
    """Seconds of `slot` after now and before `until_s`."""
    return max(0.0, min(slot.end_s, until_s) - max(slot.start_s, now_s))


def _check(slots: list[Slot], capacity_tokens_per_s: float, j_per_token: float) -> None:
    if not (math.isfinite(capacity_tokens_per_s) and capacity_tokens_per_s > 0):
        raise ValueError(f"capacity must be > 0 tokens/s, got {capacity_tokens_per_s}")
    if not (math.isfinite(j_per_token) and j_per_token >= 0):
        raise ValueError(f"J/token must be finite and >= 0, got {j_per_token}")
    for a, b in zip(slots, slots[1:], strict=False):
        if b.start_s < a.end_s - 1e-9:
            raise ValueError("slots must be in time order and must not overlap")


def _place(
    jobs: list[Job],
    slots: list[Slot],
    now_s: float,
    capacity_tokens_per_s: float,
    order_for,
) -> tuple[list[Allocation], list[str]]:
    """Jobs in deadline order, each filling slots in `order_for(job)` order before its deadline; what does
    not fit runs in the earliest capacity left (late)."""
    free = [capacity_tokens_per_s * _usable_s(s, now_s, math.inf) for s in slots]
    used_s = [0.0] * len(slots)  # seconds of each slot already given to earlier jobs
    allocations: list[Allocation] = []
    late: list[str] = []
    for job in sorted(jobs, key=lambda j: (j.deadline_s, j.id)):
        left = job.tokens
        start_s = max(now_s, job.release_s)
        for i in order_for(job):
            if left <= TOKEN_EPS:
                break
            room_s = min(
                _usable_s(slots[i], start_s, job.deadline_s),
                _usable_s(slots[i], now_s, job.deadline_s) - used_s[i],
            )
            take = min(left, free[i], max(0.0, room_s) * capacity_tokens_per_s)
            if take > TOKEN_EPS:
                allocations.append(Allocation(job.id, i, take))
                free[i] -= take
                used_s[i] += take / capacity_tokens_per_s
                left -= take
        if left > TOKEN_EPS:
            late.append(job.id)
            for i in range(len(slots)):  # the earliest capacity left, deadline or not: never starve
                if left <= TOKEN_EPS:
                    break
                if slots[i].end_s <= start_s:
                    continue
                take = min(left, free[i])
                if take > TOKEN_EPS:
                    allocations.append(Allocation(job.id, i, take))
                    free[i] -= take
                    used_s[i] += take / capacity_tokens_per_s
                    left -= take
            if left > TOKEN_EPS and slots:  # beyond the forecast: the last slot holds the rest
                allocations.append(Allocation(job.id, len(slots) - 1, left))
    return allocations, late


def plan(
    jobs: list[Job],
    slots: list[Slot],
    *,
    now_s: float,
    capacity_tokens_per_s: float,
    j_per_token: float,
    pue: float = 1.0,
) -> Plan:
    """The least-carbon plan that meets every deadline it can (see the module docstring)."""
    _check(slots, capacity_tokens_per_s, j_per_token)

    def cleanest_first(job: Job) -> list[int]:
        usable = [
            i for i, s in enumerate(slots) if _usable_s(s, max(now_s, job.release_s), job.deadline_s) > 0
        ]
        return sorted(usable, key=lambda i: (slots[i].intensity_g_per_kwh, slots[i].start_s))

    allocations, late = _place(jobs, slots, now_s, capacity_tokens_per_s, cleanest_first)
    return Plan(now_s, list(slots), allocations, capacity_tokens_per_s, j_per_token, pue, late, "cleanest")


def plan_asap(
    jobs: list[Job],
    slots: list[Slot],
    *,
    now_s: float,
    capacity_tokens_per_s: float,
    j_per_token: float,
    pue: float = 1.0,
) -> Plan:
    """Everything as soon as capacity allows, in deadline order: running on arrival."""
    _check(slots, capacity_tokens_per_s, j_per_token)

    def earliest_first(job: Job) -> list[int]:
        return [i for i, s in enumerate(slots) if _usable_s(s, max(now_s, job.release_s), job.deadline_s) > 0]

    allocations, late = _place(jobs, slots, now_s, capacity_tokens_per_s, earliest_first)
    return Plan(now_s, list(slots), allocations, capacity_tokens_per_s, j_per_token, pue, late, "asap")
