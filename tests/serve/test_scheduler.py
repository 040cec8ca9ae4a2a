"""The scheduler without HTTP or a model: a counting stepper and an energy counter make every figure exact."""

import threading

import pytest

from greenlm.serve.errors import NotAccepting, QueueFull, RequestError
from greenlm.serve.ledger import EnergyLedger
from greenlm.serve.metrics import ServeMetrics
from greenlm.serve.sampling import SamplingParams
from greenlm.serve.scheduler import FinishEvent, Scheduler, TokenEvent
from tests.serve.fakes import VOCAB, CounterMeter, CountingStepper, detokenize

GREEDY = dict(temperature=0)


@pytest.fixture
def rig():
    meter = CounterMeter()
    stepper = CountingStepper(meter, slots=2, step_tokens=8, context_tokens=64)
    ledger = EnergyLedger(meter, intensity_g_per_kwh=400.0, pue=1.5)
    metrics = ServeMetrics("fake", ledger)
    scheduler = Scheduler(stepper, ledger, metrics, detokenize=detokenize, max_queue=1)
    yield stepper, scheduler, ledger, meter
    if stepper.gate is not None:
        stepper.gate.set()
    scheduler.close(drain_timeout_s=5)


def params(max_tokens=5, **kw):
    return SamplingParams(max_tokens=max_tokens, **{**GREEDY, **kw})


def test_tokens_text_and_usage_of_one_request(rig):
    stepper, scheduler, ledger, meter = rig
    handle = scheduler.submit([3, 4], params(5))
    events = list(handle.events(timeout_s=10))
    result = events[-1].result
    assert isinstance(events[-1], FinishEvent) and all(isinstance(e, TokenEvent) for e in events[:-1])
    assert list(result.token_ids) == [5, 6, 7, 8, 9]  # the counting rule, one token per step
    assert result.text == detokenize([5, 6, 7, 8, 9]) == "".join(e.text for e in events[:-1])
    assert (result.finish_reason, result.prompt_tokens, result.completion_tokens) == ("length", 2, 5)
    # one prefill step (2 J + a read) and four decode steps (3 J + a read each); the window edges tile time
    assert result.prefill_j > 0 and result.decode_j > 0
    assert result.carbon_g == pytest.approx(result.energy_j / 3.6e6 * 400 * 1.5)
    assert result.meter == "fake-counter" and result.energy_source == "measured"
    assert stepper.released == [0]


def test_requests_join_a_running_batch_and_long_prompts_are_chunked(rig):
    stepper, scheduler, ledger, meter = rig
    stepper.gate = threading.Event()
    first = scheduler.submit([1, 2, 3], params(6))
    assert stepper.entered.wait(5)  # the first request's prompt is in a step, held at the gate
    second = scheduler.submit(list(range(1, 21)), params(3))  # 20 prompt tokens, step budget 8
    stepper.gate.set()
    a, b = first.wait(10), second.wait(10)
    assert list(a.token_ids) == [4, 5, 6, 7, 8, 9] and list(b.token_ids) == [21, 22, 23]
    steps = stepper.steps
    assert all(sum(len(f.token_ids) for f in step) <= 8 for step in steps)
    # the second request's prompt ran in chunks beside the first request's decode tokens
    mixed = [s for s in steps if len(s) == 2 and {len(f.token_ids) > 1 for f in s} == {True, False}]
    assert len(mixed) >= 2
    assert [len(f.token_ids) for s in steps for f in s if f.slot == 1 and len(f.token_ids) > 1] == [7, 7, 6]


def test_prefill_chunk_caps_prompt_tokens_only_while_others_decode():
    meter = CounterMeter()
    stepper = CountingStepper(meter, slots=2, step_tokens=16, context_tokens=64)
    ledger = EnergyLedger(meter, intensity_g_per_kwh=400.0, pue=1.0)
    scheduler = Scheduler(
        stepper,
        ledger,
        ServeMetrics("fake", ledger),
        detokenize=detokenize,
        max_queue=2,
        prefill_chunk_tokens=3,
    )
    try:
        stepper.gate = threading.Event()
        first = scheduler.submit(list(range(1, 13)), params(6))  # alone: its 12 tokens go in one step
        assert stepper.entered.wait(5)
        second = scheduler.submit(list(range(1, 11)), params(2))  # beside a decoding stream: 3 per step
        stepper.gate.set()
        first.wait(10), second.wait(10)
    finally:
        stepper.gate.set()
        scheduler.close(drain_timeout_s=5)
    prompt_feeds = [
        (f.slot, len(f.token_ids)) for step in stepper.steps for f in step if len(f.token_ids) > 1
    ]
    assert prompt_feeds[0] == (0, 12)
    assert [n for slot, n in prompt_feeds if slot == 1] == [3, 3, 3]  # the 10th token goes as a 1-token chunk
    assert all(len(f.token_ids) <= 3 for step in stepper.steps if len(step) > 1 for f in step)


def test_the_energy_invariant_is_exact(rig):
    stepper, scheduler, ledger, meter = rig
    results = []

    def client(i):
        results.append(scheduler.submit([1 + i, 2 + i], params(4 + i)).wait(10))

    for _wave in range(3):
        threads = [threading.Thread(target=client, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    snap = ledger.snapshot()
    assert len(results) == 6
    assert snap["requests_j"] + snap["idle_j"] == pytest.approx(snap["meter_total_j"], rel=1e-12)
    assert sum(r.energy_j for r in results) == pytest.approx(snap["requests_j"], rel=1e-12)
    assert snap["idle_j"] > 0 and snap["idle_windows"] >= 1
    assert abs(snap["accounting_gap_j"]) < 1e-9


def test_a_full_queue_is_refused_with_a_retry_hint(rig):
    stepper, scheduler, ledger, meter = rig
    stepper.gate = threading.Event()
    running = [scheduler.submit([1], params(30)), scheduler.submit([2], params(30))]  # both slots
    assert stepper.entered.wait(5)
    queued = scheduler.submit([3], params(2))  # --max-queue 1
    with pytest.raises(QueueFull) as info:
        scheduler.submit([4], params(2))
    assert info.value.status == 429 and info.value.retry_after_s >= 1
    stepper.gate.set()
    assert [h.wait(10).finish_reason for h in running + [queued]] == ["length"] * 3


def test_a_cancelled_request_frees_its_slot_for_a_queued_one(rig):
    stepper, scheduler, ledger, meter = rig
    stepper.gate = threading.Event()
    long = [scheduler.submit([1], params(40)), scheduler.submit([2], params(40))]
    assert stepper.entered.wait(5)
    waiting = scheduler.submit([3], params(2))
    long[0].cancel()
    stepper.gate.set()
    assert waiting.wait(10).finish_reason == "length"  # it got the cancelled request's slot
    cancelled = long[0].wait(10)
    assert cancelled.finish_reason == "abort" and cancelled.completion_tokens < 40
    assert cancelled.energy_j > 0  # what it used stays charged to it
    assert long[1].wait(10).finish_reason == "length"
    assert stepper.released.count(0) >= 2


def test_stop_strings_end_of_text_and_ignore_eos(rig):
    stepper, scheduler, ledger, meter = rig
    stop_at = detokenize([7, 8])
    result = scheduler.submit([4], params(10, stop=(stop_at,))).wait(10)
    assert result.finish_reason == "stop" and result.text == detokenize([5, 6])
    result = scheduler.submit([VOCAB - 3], params(10)).wait(10)  # counts up to VOCAB - 1, then EOS
    assert result.finish_reason == "stop" and list(result.token_ids) == [VOCAB - 2, VOCAB - 1, 0]
    assert result.text == detokenize([VOCAB - 2, VOCAB - 1]) and result.completion_tokens == 3
    result = scheduler.submit([VOCAB - 3], params(6, ignore_eos=True)).wait(10)
    assert result.finish_reason == "length" and list(result.token_ids) == [VOCAB - 2, VOCAB - 1, 0, 1, 2, 3]


def test_an_engine_failure_fails_that_step_and_the_server_goes_on(rig):
    stepper, scheduler, ledger, meter = rig
    stepper.fail_next = True
    failed = scheduler.submit([1], params(3)).wait(10)
    assert failed.finish_reason == "error" and "fake engine failed" in failed.error
    assert scheduler.submit([1], params(3)).wait(10).finish_reason == "length"


def test_context_overflow_and_draining(rig):
    stepper, scheduler, ledger, meter = rig
    with pytest.raises(RequestError, match="context"):
        scheduler.submit([1] * 60, params(10))
    with pytest.raises(RequestError, match="empty"):
        scheduler.submit([], params(1))
    handle = scheduler.submit([1], params(3))
    assert scheduler.drain(timeout_s=10)
    assert handle.wait(1).finish_reason == "length"
    with pytest.raises(NotAccepting):
        scheduler.submit([1], params(1))


def test_a_reader_of_the_load_figures_does_not_hide_a_burst_from_the_control_loop(rig):
    stepper, scheduler, ledger, meter = rig
    stepper.gate = threading.Event()
    burst = [
        scheduler.submit([1], params(3)),
        scheduler.submit([2], params(3)),
        scheduler.submit([3], params(3)),
    ]
    assert stepper.entered.wait(5)
    stepper.gate.set()
    for handle in burst:
        handle.wait(10)
    assert scheduler.load_stats(10.0, reset_peak=False)["peak_concurrency"] == 3  # the dashboard's read
    assert scheduler.load_stats(10.0)["peak_concurrency"] == 3  # the control loop still sees the burst
    assert scheduler.load_stats(10.0)["peak_concurrency"] == 0  # and resets it
