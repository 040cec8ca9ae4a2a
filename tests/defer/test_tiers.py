"""Tiers in the scheduler, on the counting stepper: deferred requests take only slots the default tier leaves
free, a default request takes back a preemptible deferred one's slot at once (which restarts later with the
same output), deferred requests never count against --max-queue, and only the default tier feeds the
TTFT and queue records the load policy reads."""

from __future__ import annotations

import threading

import pytest

from greenlm.serve.ledger import EnergyLedger
from greenlm.serve.metrics import ServeMetrics
from greenlm.serve.sampling import SamplingParams
from greenlm.serve.scheduler import Scheduler
from tests.serve.fakes import CounterMeter, CountingStepper, detokenize


@pytest.fixture
def rig():
    meter = CounterMeter()
    stepper = CountingStepper(meter, slots=2, step_tokens=8, context_tokens=64)
    ledger = EnergyLedger(meter, intensity_g_per_kwh=400.0, pue=1.0)
    scheduler = Scheduler(stepper, ledger, ServeMetrics("fake", ledger), detokenize=detokenize, max_queue=0)
    yield stepper, scheduler, ledger
    if stepper.gate is not None:
        stepper.gate.set()
    scheduler.close(drain_timeout_s=5)


def greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0)


def test_a_default_request_takes_a_preemptible_slot_and_the_deferred_one_restarts_unchanged(rig):
    stepper, scheduler, ledger = rig
    alone = scheduler.submit([5], greedy(12), tier="batch").wait(10)
    # hold the loop in a task while both batch requests queue, so it admits them together
    hold, holding = threading.Event(), threading.Event()
    threading.Thread(
        target=scheduler.call, args=(lambda: holding.set() or hold.wait(10),), daemon=True
    ).start()
    assert holding.wait(5)
    deferred = [scheduler.submit([5], greedy(12), tier="batch", preemptible=True) for _ in range(2)]
    stepper.gate = threading.Event()
    stepper.entered.clear()
    hold.set()
    assert stepper.entered.wait(5)  # both slots held by batch requests, a step in flight
    # --max-queue 0: a queued default request is refused only beyond the free slots; deferred ones never count
    interactive = scheduler.submit([9], greedy(3))
    stepper.gate.set()
    first = interactive.wait(10)
    results = [h.wait(10) for h in deferred]
    assert first.finish_reason == "length" and first.tier == "default"
    assert first.queue_s < min(r.e2e_s for r in results)  # it did not wait for a batch request to finish
    assert sorted(r.preempted for r in results) == [0, 1]  # the newest gave its slot back, once
    assert all(
        r.token_ids == alone.token_ids and r.finish_reason == "length" for r in results
    )  # restarted whole
    preempted = next(r for r in results if r.preempted)
    assert preempted.energy_j > max(
        r.energy_j for r in results if not r.preempted
    )  # its lost work is its own
    snap = ledger.snapshot()
    assert abs(snap["accounting_gap_j"]) < 1e-9


def test_deferred_requests_wait_for_slots_the_default_tier_leaves(rig):
    stepper, scheduler, ledger = rig
    stepper.gate = threading.Event()
    first = [scheduler.submit([1], greedy(6))]
    assert stepper.entered.wait(5)  # its prompt is in a step, held at the gate
    first.append(scheduler.submit([2], greedy(6)))  # queued until the step ends, then the second slot
    batch = scheduler.submit([40], greedy(2), tier="batch", preemptible=True)
    stats = scheduler.load_stats(10.0, reset_peak=False)
    assert (stats["deferred_waiting"], stats["waiting"]) == (1, 1) and scheduler.tier_counts() == (2, 1)
    stepper.gate.set()
    assert all(h.wait(10).finish_reason == "length" for h in first)
    late = batch.wait(10)
    assert late.preempted == 0 and late.tier == "batch" and list(late.token_ids) == [41, 42]
    joined = next(i for i, step in enumerate(stepper.steps) if any(f.token_ids == [40] for f in step))
    assert joined >= 6  # its prompt ran only once the first default request (prompt + 5 decodes) had left


def test_only_the_default_tier_feeds_the_load_policy_records(rig):
    stepper, scheduler, ledger = rig
    scheduler.submit([1], greedy(3), tier="flex").wait(10)
    stats = scheduler.load_stats(60.0)
    assert stats["ttft_p90_s"] is None and stats["queue_p90_s"] is None
    scheduler.submit([1], greedy(3)).wait(10)
    stats = scheduler.load_stats(60.0)
    assert stats["ttft_p90_s"] is not None and stats["queue_p90_s"] is not None
