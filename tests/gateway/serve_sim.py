"""A continuous-batching server simulated step by step, split the way greenlm serve splits its steps (its own
`split_step` and `update_costs`), and seen from outside as the gateway sees it: chunk arrival times, each
request's counts at its end, and readings of the server's meter at the gateway's window edges.

Deterministic for a seed; no clock, no threads. It is what the gateway's attribution is checked against: the
outside split of the same energy should agree with the inside split request by request.

The server's model (the shape of a CPU llama.cpp server, not its figures): a step takes
`base_s + prefill_s * prompt tokens + decode_s * decode tokens` (times a random factor), draws `busy_w` while
it runs and `idle_w` between requests; prompts are processed in arrival order, in chunks when a step's tokens
are capped (`step_tokens`, as serve's --step-tokens); a step's tokens reach the gateway `latency_s` after it
ends, some later when the gateway's loop is held up (`stall`).
"""

from __future__ import annotations

import bisect
import heapq
import random
from dataclasses import dataclass, field

from greenlm.energy.base import Reading
from greenlm.serve.attribution import PhaseCosts, StepWork, split_step, update_costs
from tests.gateway.fakes import ScriptedMeter


@dataclass
class ServerShape:
    concurrency: int = 8  # closed-loop clients, each sending its next request when the last ends
    slots: int = 8
    step_tokens: int | None = (
        None  # a step's token budget: prompts beyond it go on in the next steps (chunks)
    )
    prompt_tokens: int = 128
    prompt_jitter: int = 0  # prompts of prompt_tokens +- this
    output_tokens: int = 64
    base_s: float = 0.012
    prefill_s: float = 0.0025  # per prompt token
    decode_s: float = 0.003  # per decode token in a step
    step_noise: float = 0.15  # a step's time times U(1 - noise, 1 + noise)
    busy_w: float = 14.0
    prefill_w: float | None = None  # the power of a step with prompt tokens (None: busy_w)
    idle_w: float = 3.0
    latency_s: tuple[float, float] = (0.0003, 0.002)  # a step's end to its chunks at the gateway
    client_gap_s: tuple[float, float] = (0.001, 0.004)  # a request's end to the client's next one
    empty_token: float = 0.0  # chance a token's text is empty (no chunk: a partial UTF-8 character)
    cached_prompt: float = 0.0  # share of requests whose prompt but 8 tokens come from the prefix cache
    stall: float = 0.0  # chance the gateway's loop is held up in the middle of a step's chunks
    stall_s: tuple[float, float] = (0.003, 0.015)  # for this long (a busy CPU: the server's threads run)


@dataclass
class SimRequest:
    rid: str
    client: int
    arrive_s: float  # at the gateway (the server sees it the same instant: one host)
    prompt_tokens: int
    cached_tokens: int = 0
    chunk_times: list[float] = field(default_factory=list)  # output chunks at the gateway
    tokens: int = 0
    end_s: float | None = None
    serve_prefill_j: float = 0.0
    serve_decode_j: float = 0.0

    @property
    def serve_j(self) -> float:
        return self.serve_prefill_j + self.serve_decode_j


@dataclass
class Trace:
    requests: list[SimRequest]
    step_ends: list[float]  # the server's step edges (its meter windows)
    energy_at: list[
        float
    ]  # cumulative joules at each step edge (power constant within a step or an idle gap)
    costs_at: list[tuple[float, PhaseCosts]]  # serve's split weights after each step (what /energy publishes)
    idle_j: float

    def joules(self, t: float) -> float:
        """The server's meter at time `t` (interpolated within a step: power is constant there)."""
        i = bisect.bisect_right(self.step_ends, t)
        if i == 0:
            return 0.0
        if i >= len(self.step_ends):
            return self.energy_at[-1]
        t0, t1 = self.step_ends[i - 1], self.step_ends[i]
        e0, e1 = self.energy_at[i - 1], self.energy_at[i]
        return e0 + (e1 - e0) * (t - t0) / (t1 - t0) if t1 > t0 else e1

    def costs(self, t: float) -> PhaseCosts:
        """serve's published phase costs at time `t`."""
        i = bisect.bisect_right([c[0] for c in self.costs_at], t)
        return self.costs_at[max(0, i - 1)][1]


def simulate(shape: ServerShape, requests: int, seed: int = 0) -> Trace:
    """Run closed-loop clients until `requests` requests have been sent and finished."""
    rng = random.Random(seed)
    s = shape
    costs = PhaseCosts(
        (s.base_s + s.prefill_s * s.prompt_tokens) * s.busy_w / s.prompt_tokens,
        (s.base_s + s.decode_s) * s.busy_w,
    )  # serve's warm-up: one prefill and one decode step, measured alone
    done: list[SimRequest] = []
    waiting: list[SimRequest] = []
    running: list[SimRequest] = []
    sent = 0
    t = 0.0
    energy = 0.0
    step_ends, energy_at, costs_at = [0.0], [0.0], [(0.0, costs)]
    idle_j = 0.0

    def send(client: int, at: float) -> None:
        nonlocal sent
        if sent >= requests:
            return
        prompt = s.prompt_tokens + rng.randint(-s.prompt_jitter, s.prompt_jitter)
        cached = prompt - 8 if rng.random() < s.cached_prompt else 0
        waiting.append(SimRequest(f"r{sent}", client, at, prompt, cached))
        sent += 1

    for c in range(s.concurrency):
        send(c, rng.uniform(0.0, 0.05))
    prefilling: list[SimRequest] = []  # admitted, prompt not yet all processed (FIFO, in chunks)
    left: dict[str, int] = {}  # prompt tokens still to process
    while waiting or running or prefilling:
        admitted = sorted((r for r in waiting if r.arrive_s <= t), key=lambda r: r.arrive_s)
        admitted = admitted[: s.slots - len(running) - len(prefilling)]
        if not running and not prefilling and not admitted:  # idle until the next arrival: an idle window
            nxt = min(r.arrive_s for r in waiting)
            energy += s.idle_w * (nxt - t)
            idle_j += s.idle_w * (nxt - t)
            t = nxt
            step_ends.append(t)
            energy_at.append(energy)
            continue
        for r in admitted:
            waiting.remove(r)
            prefilling.append(r)
            left[r.rid] = r.prompt_tokens - r.cached_tokens
        budget = s.step_tokens - len(running) if s.step_tokens else 1 << 30
        chunks: dict[str, int] = {}
        for r in prefilling:  # prompts in arrival order, up to the step's token budget
            if budget <= 0:
                break
            chunks[r.rid] = min(left[r.rid], budget)
            budget -= chunks[r.rid]
            left[r.rid] -= chunks[r.rid]
        prefill = sum(chunks.values())
        duration = (s.base_s + s.prefill_s * prefill + s.decode_s * len(running)) * rng.uniform(
            1 - s.step_noise, 1 + s.step_noise
        )
        step_j = (s.prefill_w if prefill and s.prefill_w is not None else s.busy_w) * duration
        work = [StepWork(rid, n, 0) for rid, n in chunks.items()]
        work += [StepWork(r.rid, 0, 1) for r in running]
        shares = {sh.request_id: sh for sh in split_step(step_j, work, costs)}
        costs = update_costs(costs, step_j, work)
        t += duration
        energy += step_j
        step_ends.append(t)
        energy_at.append(energy)
        costs_at.append((t, costs))
        for r in prefilling:
            if r.rid in shares:
                r.serve_prefill_j += shares[r.rid].prefill_j
                r.serve_decode_j += shares[r.rid].decode_j
        ready = [r for r in prefilling if r.rid in chunks and left[r.rid] == 0]
        prefilling = [r for r in prefilling if r not in ready]
        for r in running:
            r.serve_prefill_j += shares[r.rid].prefill_j
            r.serve_decode_j += shares[r.rid].decode_j
        running += ready  # their first token comes out of this step
        stalled_from = rng.randint(1, len(running)) if rng.random() < s.stall else len(running)
        stall = rng.uniform(*s.stall_s)
        for i, r in enumerate(list(running)):
            r.tokens += 1
            arrive = t + rng.uniform(*s.latency_s) + (stall if i >= stalled_from else 0.0)
            if r.tokens == 1 or rng.random() >= s.empty_token:
                r.chunk_times.append(arrive)
            if r.tokens >= s.output_tokens:
                running.remove(r)
                r.end_s = arrive + 0.0002  # the usage chunk and [DONE] after the last token
                done.append(r)
                send(r.client, r.end_s + rng.uniform(*s.client_gap_s))
    return Trace(done, step_ends, energy_at, costs_at, idle_j)


class TraceMeter(ScriptedMeter):
    """The server's meter as the gateway reads it: the trace's cumulative joules at the time of the reading."""

    name = "simulated"
    energy_source = "estimated"

    def __init__(self, trace: Trace):
        super().__init__()
        self.trace = trace

    def at(self, t: float) -> Reading:
        return Reading(time_s=t, values={"j": self.trace.joules(t)})


def replay(trace: Trace, ledger_of, interval_s: float = 1.0, serve_costs: bool = False) -> dict[str, float]:
    """Feed the trace to an OutsideLedger as the gateway does (a local meter: read every `interval_s`, at each
    request's end, again a step gap later while the end's step may still be arriving, and when a request starts
    on an idle server); the gateway's energy of every request. `ledger_of(meter, first_reading)` makes the
    ledger; `serve_costs`: hand it serve's published phase costs at every tick (what the gateway reads from an
    upstream greenlm serve's /energy)."""
    meter = TraceMeter(trace)
    book = ledger_of(meter, meter.at(0.0))
    events: list[tuple[float, int, int, str, SimRequest | None]] = []
    for r in trace.requests:
        events.append((r.arrive_s, 0, len(events), "begin", r))
        events += [(c, 1, len(events) + i, "chunk", r) for i, c in enumerate(r.chunk_times)]
        events.append((r.end_s, 2, len(events), "end", r))
    last = max(r.end_s for r in trace.requests)
    k = 1
    while k * interval_s < last + interval_s:
        events.append((k * interval_s, 3, len(events), "tick", None))
        k += 1
    heapq.heapify(events)
    charged: dict[str, float] = {}
    waiting: list[str] = []

    def close(t: float) -> None:
        book.close_window(meter.at(t))
        for rid in [w for w in waiting if book.ready(w)]:
            charged[rid] = book.charge(rid).energy_j
            waiting.remove(rid)

    while events:
        t, _, n, kind, r = heapq.heappop(events)
        if kind == "begin":
            if book.in_flight == 0 and t > book.last_edge_s:
                close(t)
            book.begin(r.rid, t, streaming=True, prompt_tokens=r.prompt_tokens)
        elif kind == "chunk":
            book.output_chunk(r.rid, t)
        elif kind == "end":
            book.end(
                r.rid, t, prompt_tokens=r.prompt_tokens, completion_tokens=r.tokens,
                content_chunks=len(r.chunk_times), cached_tokens=r.cached_tokens,
            )  # fmt: skip
            waiting.append(r.rid)
            close(t)
            if not book.ready(r.rid):
                heapq.heappush(events, (t + book.step_gap_s, 3, n, "settle", None))
        elif t > book.last_edge_s:
            if serve_costs and kind == "tick" and book.in_flight:
                book.use_upstream_costs(trace.costs(t), "test")
            close(t)
    close(last + 2 * interval_s)
    assert not waiting, waiting
    return charged


def agreement(trace: Trace, charged: dict[str, float], skip: int = 8) -> dict:
    """How the gateway's figures compare with serve's, request by request (the first `skip` left out: the
    server's warm-up costs are not what it learns under load)."""
    pairs = [(charged[r.rid], r.serve_j) for r in trace.requests[skip:] if r.serve_j > 0]
    rel = sorted(abs(g - s) / s for g, s in pairs)
    return {
        "requests": len(pairs),
        "within_10pct": sum(x <= 0.10 for x in rel) / len(rel),
        "p90": rel[int(0.9 * (len(rel) - 1))],
        "total_rel": sum(g for g, _ in pairs) / sum(s for _, s in pairs) - 1,
    }
