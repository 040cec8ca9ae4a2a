"""The gateway's split of an upstream's metered energy among the requests it watched: pure numbers, a scripted
meter, every window's shares summing to the window, and requests + idle = the meter's total."""

from __future__ import annotations

import random

import pytest

from greenlm.gateway.attribution import (
    STEP_GAP_S,
    CostFit,
    Mark,
    Outcome,
    Part,
    Work,
    final_work,
    infer_steps,
    share_of,
    step_energies,
    step_gap_s,
)
from greenlm.gateway.ledger import OutsideLedger
from greenlm.serve.attribution import PhaseCosts, StepWork, split_step
from tests.gateway.fakes import ScriptedMeter


def ledger(costs: PhaseCosts | None = None) -> tuple[OutsideLedger, ScriptedMeter]:
    meter = ScriptedMeter()
    return OutsideLedger(meter, meter.at(0.0), intensity_g_per_kwh=360.0, pue=1.0, costs=costs), meter


def stream(
    book: OutsideLedger, rid: str, start: float, chunk_times: list[float], end: float, prompt: int
) -> None:
    book.begin(rid, start, streaming=True, prompt_chars=prompt * 4)
    for t in chunk_times:
        book.output_chunk(rid, t)
    book.end(
        rid, end, prompt_tokens=prompt, completion_tokens=len(chunk_times), content_chunks=len(chunk_times)
    )


def test_one_request_takes_its_steps_and_idle_keeps_the_rest():
    book, meter = ledger()
    book.close_window(meter.at(1.0, 5.0))  # nobody in flight: idle
    book.begin("a", 1.2, streaming=True)
    book.output_chunk("a", 1.5)
    book.output_chunk("a", 1.7)
    book.close_window(meter.at(2.0, 10.0))
    book.output_chunk("a", 2.2)
    book.end("a", 2.5, prompt_tokens=10, completion_tokens=3, content_chunks=3)
    assert not book.ready("a")
    book.close_window(meter.at(3.0, 7.0))
    assert book.ready("a")
    charge = book.charge("a")
    # 10 W over [1, 2]: [1, 1.2] before it began is idle, its steps end at 1.5 and 1.7 (3 J, 2 J), the rest of
    # the window (3 J) belongs to its step ending at 2.2 with [2, 2.2] (1.4 J); after its last step, idle
    assert charge.energy_j == pytest.approx(9.4)
    assert charge.carbon_g == pytest.approx(9.4 / 3.6e6 * 360.0)
    snap = book.snapshot()
    assert snap["idle_j"] == pytest.approx(5.0 + 2.0 + 5.6) and snap["pending_j"] == 0
    assert snap["requests_j"] + snap["idle_j"] == pytest.approx(snap["meter_total_j"], rel=1e-12)


def test_each_step_it_sees_is_split_as_greenlm_serve_splits_it():
    costs = PhaseCosts(prefill_j_per_token=0.5, decode_j_per_token=2.0)
    book, meter = ledger(costs)
    # the server's steps end at 0.2, 0.4, 0.6 and 0.8; a stream's chunk comes out of each step it is in, up to
    # a millisecond after the step's end
    script = {
        "a": (0.0, [0.2, 0.4, 0.6], 20),
        "b": (0.0, [0.2005, 0.4005, 0.6005, 0.8], 8),
        "c": (0.3, [0.401, 0.601], 50),
    }
    for rid, (start, times, _) in script.items():
        book.begin(rid, start, streaming=True)
        for t in times:
            book.output_chunk(rid, t)
    for rid, (_, times, prompt) in sorted(script.items(), key=lambda kv: kv[1][1][-1]):
        book.end(
            rid,
            times[-1] + 0.01,
            prompt_tokens=prompt,
            completion_tokens=len(times),
            content_chunks=len(times),
        )
    book.close_window(meter.at(1.0, 10.0))  # 10 W: 2 J a step, the 0.2 s after the last one idle
    charges = {rid: book.charge(rid) for rid in ("a", "b", "c")}
    steps = [
        [StepWork("a", 20, 0), StepWork("b", 8, 0)],
        [StepWork("a", 0, 1), StepWork("b", 0, 1), StepWork("c", 50, 0)],
        [StepWork("a", 0, 1), StepWork("b", 0, 1), StepWork("c", 0, 1)],
        [StepWork("b", 0, 1)],
    ]
    expected = {rid: [0.0, 0.0] for rid in script}
    for work in steps:
        for share in split_step(2.0, work, costs):
            expected[share.request_id][0] += share.prefill_j
            expected[share.request_id][1] += share.decode_j
    for rid, (prefill_j, decode_j) in expected.items():
        assert charges[rid].prefill_j == pytest.approx(prefill_j, rel=1e-3)
        assert charges[rid].decode_j == pytest.approx(decode_j, rel=1e-3)
    assert book.snapshot()["idle_j"] == pytest.approx(2.0, rel=1e-3)


def test_a_window_with_requests_but_no_token_is_carried_to_the_next():
    book, meter = ledger()
    book.begin("long-prefill", 0.5, streaming=True)
    book.close_window(meter.at(1.0, 4.0))  # [0, 0.5] idle, the rest carried
    book.close_window(meter.at(2.0, 4.0))  # still no token: carried
    book.output_chunk("long-prefill", 2.5)
    book.end("long-prefill", 2.6, prompt_tokens=900, completion_tokens=1, content_chunks=1)
    book.close_window(meter.at(3.0, 4.0))
    # its one step ran from 0.5 to 2.5: 2 + 4 + 2 J
    assert book.charge("long-prefill").energy_j == pytest.approx(8.0)
    assert book.snapshot()["carried_windows"] == 2


def chat_beside_batch():
    """A non-streaming "batch" from 0 s, and a streamed "chat" from 1 s with 4 chunks, ended at 1.9 s; the
    first 10 J window closed at 1 s."""
    book, meter = ledger(PhaseCosts(prefill_j_per_token=1.0, decode_j_per_token=1.0))
    book.begin("batch", 0.0, streaming=False)
    book.begin("chat", 1.0, streaming=True)
    book.close_window(meter.at(1.0, 10.0))
    for t in (1.2, 1.4, 1.6, 1.8):
        book.output_chunk("chat", t)
    book.end("chat", 1.9, prompt_tokens=0, completion_tokens=4, content_chunks=4)
    return book, meter


def test_non_streaming_decode_is_spread_over_its_lifetime():
    book, meter = chat_beside_batch()
    book.close_window(meter.at(2.0, 10.0))
    # chat is charged while batch still runs: in each of chat's steps after its first (2 J each), batch's
    # tokens are estimated at chat's rate (a batching server gives each running request one token a step)
    chat = book.charge("chat")
    assert chat.energy_j == pytest.approx(3 * 1.0)
    book.end("batch", 2.5, prompt_tokens=0, completion_tokens=11, content_chunks=0)
    book.close_window(meter.at(3.0, 10.0))
    batch = book.charge("batch")  # window 1, the rest of window 2, window 3 up to its end at 2.5
    assert batch.energy_j == pytest.approx(10.0 + 7.0 + 5.0)
    assert book.snapshot()["idle_j"] == pytest.approx(5.0)


def test_non_streaming_alongside_a_finished_stream_is_exact():
    book, meter = chat_beside_batch()
    book.end("batch", 2.0, prompt_tokens=0, completion_tokens=7, content_chunks=0)
    book.close_window(meter.at(2.0, 10.0))
    chat, batch = book.charge("chat"), book.charge("batch")
    # window 2's steps: 2 J each; batch's 6 decode tokens over its 2 s are 0.6 in each 0.2 s step beside chat's
    # 1, and batch's answer ends the last step (1.8 to 2.0) alone
    assert chat.energy_j == pytest.approx(3 * 2.0 / 1.6)
    assert batch.energy_j == pytest.approx(20.0 - chat.energy_j)


def test_final_work_scales_chunks_to_the_reported_tokens():
    outcome = Outcome(prompt_tokens=12, completion_tokens=21, content_chunks=11, life_s=2.0)
    first = final_work(Part("r", True, first=True, prefill=1.0, chunks=4), outcome)
    rest = final_work(Part("r", True, chunks=6), outcome)
    assert first == Work(12, 8.0) and rest == Work(0, 12.0)
    spread = final_work(Part("r", False, overlap_s=0.5), outcome)
    assert spread == Work(0, 5.0)


def test_share_of_never_gives_more_than_remains():
    costs = PhaseCosts()
    assert share_of(3.0, Work(0, 5), [], costs) == (0.0, 3.0)
    assert share_of(3.0, Work(0, 0), [Work(0, 1)], costs) == (0.0, 0.0)
    p, d = share_of(4.0, Work(1, 1), [Work(0, 2)], costs)
    assert p + d == pytest.approx(2.0) and p == pytest.approx(1.0)
    with pytest.raises(ValueError):
        share_of(-1.0, Work(0, 1), [], costs)


@pytest.mark.parametrize("seed", range(6))
def test_requests_plus_idle_equal_the_meter_under_random_concurrent_load(seed):
    rng = random.Random(seed)
    book, meter = ledger()
    now, edge = 0.0, 0.0
    live: dict[str, dict] = {}
    ended: list[str] = []
    charged = {}
    for step in range(4000):
        now += rng.uniform(0.001, 0.02)
        if rng.random() < 0.02 and len(live) < 64:
            rid = f"r{step}"
            streaming = rng.random() < 0.7
            book.begin(rid, now, streaming=streaming, prompt_chars=rng.randint(0, 4000))
            live[rid] = {"streaming": streaming, "chunks": 0, "left": rng.randint(0, 60)}
        for rid, r in list(live.items()):
            if r["left"] > 0 and rng.random() < 0.3:
                r["left"] -= 1
                r["chunks"] += 1
                if r["streaming"]:
                    book.output_chunk(rid, now)
            elif r["left"] == 0 and rng.random() < 0.2:
                failed = rng.random() < 0.05
                book.end(
                    rid, now,
                    prompt_tokens=0 if failed else rng.randint(1, 1000),
                    completion_tokens=0 if failed else r["chunks"] + rng.randint(0, 3),
                    content_chunks=r["chunks"],
                )  # fmt: skip
                del live[rid]
                ended.append(rid)
        if now - edge > rng.choice((0.05, 0.3, 1.0)):
            book.close_window(meter.at(now, rng.uniform(0.0, 20.0)))
            edge = now
        for rid in [r for r in ended if book.ready(r)]:
            charged[rid] = book.charge(rid)
            ended.remove(rid)
    for rid in list(live):
        book.end(
            rid,
            now,
            prompt_tokens=5,
            completion_tokens=live[rid]["chunks"],
            content_chunks=live[rid]["chunks"],
        )
        ended.append(rid)
    book.close_window(meter.at(now + 0.5, 3.0))
    for rid in ended:
        charged[rid] = book.charge(rid)
    snap = book.snapshot()
    assert all(c.prefill_j >= 0 and c.decode_j >= 0 for c in charged.values())
    assert sum(c.energy_j for c in charged.values()) == pytest.approx(snap["requests_j"], rel=1e-9)
    assert snap["pending_j"] == 0 and snap["in_flight"] == 0
    assert snap["requests_j"] + snap["idle_j"] == pytest.approx(snap["meter_total_j"], rel=1e-9)
    assert snap["requests_j"] > 0 and snap["idle_j"] >= 0


def test_cost_fit_recovers_prefill_and_decode_costs_from_mixed_windows():
    rng = random.Random(3)
    fit = CostFit()
    for _ in range(200):
        prefill, decode = rng.choice((0, 128, 256)), rng.randint(20, 60)
        fit = fit.add(0.05 * prefill + 0.4 * decode + rng.uniform(-0.2, 0.2), prefill, decode)
    costs = fit.costs()
    assert costs.prefill_j_per_token == pytest.approx(0.05, rel=0.1)
    assert costs.decode_j_per_token == pytest.approx(0.4, rel=0.05)
    only_decode = CostFit()
    for _ in range(20):
        only_decode = only_decode.add(10.0, 0, 25)
    assert only_decode.costs() is None  # one kind of work: the prefill cost is not determined


def test_prompt_tokens_from_the_upstreams_prefix_cache_are_not_charged_as_prefill():
    outcome = Outcome(prompt_tokens=120, completion_tokens=3, content_chunks=3, life_s=1.0, cached_tokens=100)
    assert final_work(Part("r", True, first=True, prefill=1.0, chunks=1), outcome) == Work(20, 1.0)
    costs = PhaseCosts(prefill_j_per_token=1.0, decode_j_per_token=1.0)
    book, meter = ledger(costs)
    for rid, cached in (("cached", 100), ("cold", 0)):
        book.begin(rid, 0.0, streaming=True)
        book.output_chunk(rid, 0.5)
        book.end(rid, 0.6, prompt_tokens=120, completion_tokens=1, content_chunks=1, cached_tokens=cached)
    book.close_window(meter.at(1.0, 14.0))
    # their one step (0 to 0.5: 7 J) by computed prompt tokens, 20 against 120
    assert book.charge("cached").prefill_j == pytest.approx(1.0)
    assert book.charge("cold").prefill_j == pytest.approx(6.0)
    assert book.cached_share == pytest.approx((0.8 * 100) / (0.8 * 120 + 120))  # recent requests weigh more


def test_usage_passes_the_upstreams_cached_tokens_through():
    from greenlm.gateway.ledger import Charge
    from greenlm.gateway.usage import Counts, cached_tokens, gateway_usage

    upstream = {"prompt_tokens": 50, "completion_tokens": 4, "prompt_tokens_details": {"cached_tokens": 32}}
    assert cached_tokens(upstream) == 32 and cached_tokens({"prompt_tokens_details": None}) == 0
    usage = gateway_usage(
        upstream, Counts(50, 4, cached_tokens=32), Charge(0.5, 1.0, 0.1, 1), meter="m", energy_source="measured",
        upstream="u",
    )  # fmt: skip
    assert usage["prompt_tokens_details"] == {"cached_tokens": 32} and usage["energy_j"] == pytest.approx(1.5)


def test_chunks_arriving_together_are_one_step_and_a_second_chunk_starts_the_next():
    marks = [
        Mark(0.100, "a", first=True),
        Mark(0.1012, "b"),
        Mark(0.1025, "c"),
        Mark(0.103, "a"),
        Mark(0.140, "b"),
    ]
    steps = infer_steps(marks, gap_s=0.003)
    assert [[m.request_id for m in s] for s in steps] == [["a", "b", "c"], ["a"], ["b"]]
    assert [len(s) for s in infer_steps(marks[:3], gap_s=0.001)] == [1, 1, 1]  # a tighter gap splits them
    assert infer_steps([]) == []


def test_the_gap_follows_the_time_between_a_streams_chunks():
    assert step_gap_s([]) == STEP_GAP_S
    assert step_gap_s([0.001] * 9) == STEP_GAP_S  # never below the floor
    assert step_gap_s([0.030, 0.040, 0.036, 0.5, 0.038]) == pytest.approx(0.019)  # half the median step


def test_a_window_is_spread_over_its_steps_by_time_and_the_tail_goes_on():
    energies, tail = step_energies(1.0, 2.0, 10.0, [1.25, 1.5, 1.9], carry_j=3.0)
    assert energies == pytest.approx([2.5 + 3.0, 2.5, 4.0]) and tail == pytest.approx(1.0)
    assert sum(energies) + tail == pytest.approx(13.0, rel=1e-12)
    assert step_energies(1.0, 2.0, 10.0, [], carry_j=3.0) == ([], 13.0)
    energies, tail = step_energies(1.0, 1.0, 4.0, [1.0, 1.0], carry_j=1.0)  # a zero-length window
    assert energies == [5.0, 0.0] and tail == 0.0


def test_the_upstreams_own_costs_weigh_the_split_and_say_so():
    book, meter = ledger()
    book.use_upstream_costs(PhaseCosts(0.1, 0.4), "greenlm serve's own (its /energy)")
    assert book.costs == PhaseCosts(0.1, 0.4) and book.snapshot()["phase_costs"]["source"].startswith(
        "greenlm"
    )
    book.use_upstream_costs(PhaseCosts(None, 0.4), "half known")  # not both phases: the gateway's own again
    assert book.costs == PhaseCosts() and book.costs_source != "half known"


def test_two_chunks_of_a_stream_read_at_one_instant_are_two_steps():
    costs = PhaseCosts(prefill_j_per_token=1.0, decode_j_per_token=1.0)
    book, meter = ledger(costs)
    book.begin("a", 0.0, streaming=True)
    book.begin("b", 0.0, streaming=True)
    for t in (0.2, 0.5, 0.5):  # the gateway fell behind: a's last two chunks came in one read
        book.output_chunk("a", t)
    book.output_chunk("b", 0.2)
    book.end("b", 0.25, prompt_tokens=4, completion_tokens=1, content_chunks=1)
    book.end("a", 0.55, prompt_tokens=4, completion_tokens=3, content_chunks=3)
    book.close_window(meter.at(1.0, 10.0))
    a, b = book.charge("a"), book.charge("b")
    # steps end at 0.2 (both prompts: 2 J each) and 0.5 (a alone, 3 J; its next step at the same instant: 0 J)
    assert (a.prefill_j, b.prefill_j) == (pytest.approx(1.0), pytest.approx(1.0))
    assert a.decode_j == pytest.approx(3.0) and a.steps == 3
    assert book.snapshot()["idle_j"] == pytest.approx(5.0)


def test_a_window_edge_among_a_steps_chunks_leaves_the_step_whole():
    costs = PhaseCosts(prefill_j_per_token=1.0, decode_j_per_token=1.0)
    book, meter = ledger(costs)
    for rid in ("a", "b"):
        book.begin(rid, 0.0, streaming=True)
    book.output_chunk("a", 0.2)
    book.output_chunk("b", 0.2004)
    book.output_chunk("a", 0.5)
    book.end("a", 0.5002, prompt_tokens=0, completion_tokens=2, content_chunks=2)
    book.close_window(meter.at(0.5003, 5.003))  # read at a's end: b's chunk of that step is not in yet
    assert not book.ready("a")  # its last step may have more chunks coming: it waits for them
    book.output_chunk("b", 0.5006)
    book.end("b", 0.6, prompt_tokens=0, completion_tokens=2, content_chunks=2)
    book.close_window(meter.at(1.0, 4.997))
    a, b = book.charge("a"), book.charge("b")
    # 10 W; the step whose chunks began at 0.5 ran from 0.2 to there, with the 0.3 ms to the reading (carried)
    assert a.decode_j == pytest.approx(3.003 / 2) and b.decode_j == pytest.approx(3.003 / 2)
