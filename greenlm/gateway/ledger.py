"""One upstream meter's account, seen from outside: the windows its readings cut, the engine steps the gateway
tells apart inside them, the requests in each, and where every joule went (see `attribution` for the rule).

The caller reads the meter (outside this object's lock: a remote counter is an HTTP scrape) and hands each
reading to `close_window`; the request side reports what it sees (`begin`, `output_chunk`, `end`) and asks
for a request's energy with `charge` once a window has closed at or after its end (`ready`). Thread-safe: the
event loop reports chunks, a clock thread closes windows.

Invariant, at every moment: requests + idle + pending = the sum of the closed windows = the meter's own
reading over the same span (pending: energy of steps whose requests are still running, and what is carried
forward: a window with no token yet, the tail after a window's last step). Once nothing is in flight, pending is
0: requests + idle = meter total, exactly.
"""

from __future__ import annotations

import bisect
import threading
from collections import deque
from dataclasses import dataclass, field

from greenlm.energy import Meter, Reading
from greenlm.energy.carbon import carbon_g
from greenlm.gateway.attribution import (
    CHARS_PER_TOKEN_PRIOR,
    CostFit,
    Mark,
    Outcome,
    Part,
    Work,
    decode_rate,
    estimate_work,
    final_work,
    infer_steps,
    prompt_estimate,
    share_of,
    step_energies,
    step_gap_s,
)
from greenlm.serve.attribution import PhaseCosts, StepWork, update_costs

RECENT_S = 60.0  # what power_w and tokens_per_j average over
INTERVALS_KEPT = 512  # the recent intervals between chunks that say how long a step takes
RATIO_DECAY = 0.8  # weight of the older requests in the characters-per-token ratio, at each request that ends


@dataclass(frozen=True)
class Charge:
    """A request's energy, final when reported."""

    prefill_j: float
    decode_j: float
    carbon_g: float
    steps: int  # the steps (or whole windows) it was split in

    @property
    def energy_j(self) -> float:
        return self.prefill_j + self.decode_j


@dataclass
class _Step:
    """A step of the upstream's engine as the gateway infers it (the chunks that arrived together: see
    `attribution.infer_steps`), or a whole window where no step shows: its energy and what each request did."""

    end_s: float
    energy_j: float
    carbon_per_j: float
    parts: dict[str, Part]
    remaining_j: float
    unsettled: set[str]
    costs: PhaseCosts  # the split's weights when it closed (greenlm serve splits each step by its costs then)
    inferred: bool = False  # it holds prompt chunks placed by its energy: not a step to learn the costs from


def _step(end_s: float, energy_j: float, carbon: float, parts: dict[str, Part], costs: PhaseCosts) -> _Step:
    per_j = carbon / energy_j if energy_j > 0 else 0.0
    return _Step(end_s, energy_j, per_j, parts, energy_j, set(parts), costs)


@dataclass
class _Request:
    request_id: str
    start_s: float
    streaming: bool
    prompt_chars: int
    prompt_tokens: int | None  # known at the start (a tokenizer, token ids), else from its end
    chunk_times: list[float] = field(default_factory=list)  # output chunks after the first
    first_s: float | None = None  # its first output chunk (its prefill ends there)
    prefill_placed: bool = False
    prefill_done: float = 0.0  # the share of its prompt placed in steps before its first output (chunks)
    cursor: int = 0  # chunk_times already assigned to a window
    end_s: float | None = None
    outcome: Outcome | None = None
    windows: list[_Step] = field(default_factory=list)  # the steps it was seen in
    covered: bool = False  # a window closed at or after its end


@dataclass
class _Totals:
    prefill_j: float = 0.0
    decode_j: float = 0.0
    idle_j: float = 0.0
    unattributed_j: float = (
        0.0  # part of idle: estimates left a window's remainder to a request with no token
    )
    windows_j: float = 0.0
    carry_j: float = 0.0
    carry_carbon_g: float = 0.0
    carbon_g: float = 0.0
    windows: int = 0
    steps: int = 0  # engine steps told apart by their chunks' arrival
    idle_windows: int = 0
    carried_windows: int = 0
    requests: int = 0
    output_tokens: int = 0


class OutsideLedger:
    def __init__(
        self,
        meter: Meter,
        first: Reading,
        *,
        intensity_g_per_kwh: float,
        pue: float,
        costs: PhaseCosts | None = None,
    ):
        """`first`: the meter's first reading, where the account starts."""
        self.meter = meter
        self.intensity_g_per_kwh = float(intensity_g_per_kwh)
        self.pue = float(pue)
        self._given = (costs or PhaseCosts(), "given" if costs else "equal weights until measured")
        self.costs, self.costs_source = self._given  # the split's weights now (`_choose_costs`)
        self._pure = self.costs  # J/token of steps with one kind of work only (serve's PhaseCosts rule)
        self._fit = CostFit()
        self._upstream_costs: tuple[PhaseCosts, str] | None = None
        self._intervals: deque[float] = deque(maxlen=INTERVALS_KEPT)  # between a stream's consecutive chunks
        self._last_step_s = first.time_s  # the last step's end the gateway told apart
        self._start = first
        self._last = first
        self._lock = threading.Lock()
        self._live: dict[str, _Request] = {}  # begun and not yet charged
        self._open: dict[str, _Request] = {}  # not yet covered by a closed window
        self._windows: deque[_Step] = deque()  # closed, not fully settled
        self.totals = _Totals()
        # prompt characters and tokens of the recent requests whose count came back, older ones fading (the
        # ratio estimates the prompts of requests still running; it follows a change of workload in a few)
        self._chars, self._tokens = 0.0, 0.0
        # prompt tokens the upstream took from its prefix cache, of all prompt tokens, recent requests' fading
        self._cached, self._prompted = 0.0, 0.0
        self._recent: deque[tuple[float, float, float]] = deque()  # (end_s, duration_s, energy_j)
        self._recent_tokens: deque[tuple[float, int]] = deque()

    # ---- what the gateway sees ----------------------------------------------------------------------------
    def begin(
        self, request_id: str, start_s: float, *, streaming: bool, prompt_chars: int = 0,
        prompt_tokens: int | None = None,
    ) -> None:  # fmt: skip
        req = _Request(request_id, start_s, streaming, max(0, int(prompt_chars)), prompt_tokens)
        with self._lock:
            if start_s < self._last.time_s:  # begun while a window was closing: it starts in the next one
                req.start_s = self._last.time_s
            if not streaming:  # its prompt is processed as it starts; its output is seen only at its end
                req.first_s = req.start_s
            self._live[request_id] = req
            self._open[request_id] = req

    def output_chunk(self, request_id: str, t_s: float) -> None:
        """A streamed chunk carrying output (text, reasoning or a tool call) arrived at `t_s`."""
        with self._lock:
            req = self._live.get(request_id)
            if req is None or req.end_s is not None:
                return
            if req.first_s is None:
                req.first_s = t_s
            else:
                self._intervals.append(t_s - (req.chunk_times[-1] if req.chunk_times else req.first_s))
                req.chunk_times.append(t_s)

    def end(
        self,
        request_id: str,
        end_s: float,
        *,
        prompt_tokens: int,
        completion_tokens: int,
        content_chunks: int,
        cached_tokens: int = 0,
    ) -> None:
        """The request's last byte came at `end_s` with these counts (0 and 0 for one that failed);
        `cached_tokens` of the prompt came from the upstream's prefix cache."""
        with self._lock:
            req = self._live.get(request_id)
            if req is None or req.end_s is not None:
                return
            req.end_s = max(end_s, req.start_s)
            if req.first_s is None:  # streamed with no output chunk: its prompt was processed by its end
                req.first_s = req.end_s
            req.outcome = Outcome(
                int(prompt_tokens),
                int(completion_tokens),
                int(content_chunks),
                req.end_s - req.start_s,
                int(cached_tokens),
            )
            if prompt_tokens > 0:
                self._cached = RATIO_DECAY * self._cached + min(cached_tokens, prompt_tokens)
                self._prompted = RATIO_DECAY * self._prompted + prompt_tokens
            if req.prompt_tokens is None and prompt_tokens > 0 and req.prompt_chars > 0:
                self._chars = RATIO_DECAY * self._chars + req.prompt_chars
                self._tokens = RATIO_DECAY * self._tokens + prompt_tokens
            if req.end_s <= self._last.time_s:  # a window closed meanwhile, seeing it in flight to its edge
                req.covered = True
                self._open.pop(request_id, None)
                self._late(req)

    def _late(self, req: _Request) -> None:
        """Output noted after the window it belongs to had closed, for a request no later window will see:
        it goes to the request's last window."""
        left = len(req.chunk_times) - req.cursor
        if not req.windows or (left <= 0 and req.prefill_placed):
            return
        part = req.windows[-1].parts[req.request_id]
        if not req.prefill_placed:
            part.first, part.prefill = True, part.prefill + 1.0 - req.prefill_done
            req.prefill_placed, req.prefill_done = True, 1.0
        if req.streaming:
            part.chunks += left
        req.cursor = len(req.chunk_times)

    def ready(self, request_id: str) -> bool:
        """Whether every window of the request has closed (it can be charged)."""
        with self._lock:
            req = self._live.get(request_id)
            return req is not None and req.covered

    @property
    def in_flight(self) -> int:
        """Requests begun and not yet charged."""
        return len(self._live)

    @property
    def last_edge_s(self) -> float:
        return self._last.time_s

    @property
    def chars_per_token(self) -> float:
        return self._chars / self._tokens if self._tokens else CHARS_PER_TOKEN_PRIOR

    # ---- windows ------------------------------------------------------------------------------------------
    def set_intensity(self, intensity_g_per_kwh: float) -> None:
        with self._lock:
            self.intensity_g_per_kwh = float(intensity_g_per_kwh)

    def close_window(self, reading: Reading) -> float:
        """End the window that began at the last reading: book it as idle, carry it, or hand it to the
        requests in flight. Returns its energy."""
        with self._lock:
            if reading.time_s < self._last.time_s:
                raise ValueError("meter readings must be handed over in the order they were taken")
            energy_j = self.meter.measure(self._last, reading).total_j
            t0, t1 = self._last.time_s, reading.time_s
            self._last = reading
            t = self.totals
            t.windows += 1
            t.windows_j += energy_j
            window_carbon = carbon_g(energy_j, self.intensity_g_per_kwh, self.pue)
            t.carbon_g += window_carbon
            self._recent.append((t1, t1 - t0, energy_j))
            while self._recent and self._recent[0][0] < t1 - RECENT_S:
                self._recent.popleft()
            parts, marks = self._parts(t0, t1, self._cut(t1))
            carry_j, carry_carbon = t.carry_j, t.carry_carbon_g
            t.carry_j = t.carry_carbon_g = 0.0
            running = [rid for rid in parts if rid in self._open]  # still in flight after this window
            if not parts or (not running and not any(p.seen_work for p in parts.values())):
                # nobody in flight, or only requests that ended with no token here
                t.idle_j += energy_j + carry_j
                t.idle_windows += 1
                return energy_j
            # before the first request of a window that began idle: idle (greenlm serve closes its idle window
            # when a request is admitted)
            first_start = min(self._live[rid].start_s for rid in parts)
            busy_from = t0 if carry_j > 0 or first_start <= t0 else min(first_start, t1)
            idle_j = energy_j * (busy_from - t0) / (t1 - t0) if t1 > t0 else 0.0
            t.idle_j += idle_j
            busy_j, per_j = energy_j - idle_j, window_carbon / energy_j if energy_j > 0 else 0.0
            if not any(p.seen_work for p in parts.values()):  # running, no token seen yet: the next window's
                t.carry_j, t.carry_carbon_g = busy_j + carry_j, busy_j * per_j + carry_carbon
                t.carried_windows += 1
                return energy_j
            steps = self._steps(busy_from, t1, busy_j, per_j, carry_j, carry_carbon, parts, marks)
            if not running:  # the tail after the last step: nobody's (idle)
                t.idle_j += t.carry_j
                t.carry_j = t.carry_carbon_g = 0.0
            for step in steps:
                self._windows.append(step)
                for rid in step.parts:
                    self._live[rid].windows.append(step)
            return energy_j

    def _steps(
        self, t0: float, t1: float, energy_j: float, per_j: float, carry_j: float, carry_carbon: float,
        parts: dict[str, Part], marks: list[Mark],
    ) -> list[_Step]:  # fmt: skip
        """The energy of [t0, t1] (with what the last window carried) as the engine steps its streams' chunks
        show, and the ends of its non-streaming requests (their answer comes out of a step too); the tail
        after the last step is carried to the next window. With neither (non-streaming requests running
        through), the window is one step."""
        whole = [p for p in parts.values() if not p.streaming]  # spread over the steps by their time
        # (end, the streams' chunks there): two steps may end at one instant (a stream's two chunks read at once)
        groups = [(g[0].time_s, g) for g in infer_steps(marks, self.step_gap_s)]
        for p in whole:
            req = self._live[p.request_id]
            if req.covered and req.end_s is not None:  # it ended in this window
                groups.append((req.end_s, []))
        groups.sort(key=lambda g: g[0])
        ends = [end for end, _ in groups]
        if not ends:
            return [_step(t1, energy_j + carry_j, energy_j * per_j + carry_carbon, dict(parts), self.costs)]
        energies, tail = step_energies(t0, t1, energy_j, ends, carry_j)
        self.totals.carry_j, self.totals.carry_carbon_g = tail, tail * per_j
        self.totals.steps += len(ends)
        steps = []
        held_j = held_carbon = 0.0  # a step nobody was seen in (a non-streaming request's end at the window's
        # start): its energy goes to the next step, or the tail
        for k, ((end, chunks), step_j) in enumerate(zip(groups, energies, strict=True)):
            begin = ends[k - 1] if k else t0  # (a step deferred from the last window began before t0)
            before = ends[k - 1] if k else min(t0, self._last_step_s)  # its requests arrived before this
            step_parts: dict[str, Part] = {}
            for (
                m
            ) in chunks:  # a stream's overlap: the step's time (a non-streaming request's tokens there are
                # estimated at the streams' rate: a batching server gives each running request one per step)
                part = Part(
                    m.request_id, True, first=m.first, chunks=0 if m.first else 1, overlap_s=end - begin
                )
                if m.first:  # its prompt's rest was processed in this step
                    req = self._live[m.request_id]
                    part.prefill, req.prefill_done = 1.0 - req.prefill_done, 1.0
                step_parts[m.request_id] = part
            for p in whole:
                req = self._live[p.request_id]
                life_end = req.end_s if req.end_s is not None else t1
                overlap = max(0.0, min(end, life_end) - max(begin, req.start_s))
                place = p.first and (req.first_s < end or k == len(ends) - 1)
                if overlap > 0 or place:
                    step_parts[p.request_id] = Part(
                        p.request_id, False, first=place, prefill=1.0 if place else 0.0, overlap_s=overlap
                    )
                    p.first = p.first and not place
            inferred = self._place_prompt_chunks(step_j, before, end, step_parts)
            self._last_step_s = end
            step_carbon = (step_j - carry_j) * per_j + carry_carbon if k == 0 else step_j * per_j
            if not step_parts:
                held_j, held_carbon = held_j + step_j, held_carbon + step_carbon
                continue
            steps.append(_step(end, step_j + held_j, step_carbon + held_carbon, step_parts, self.costs))
            steps[-1].inferred = inferred
            held_j = held_carbon = 0.0
        self.totals.carry_j += held_j
        self.totals.carry_carbon_g += held_carbon
        return steps

    def _place_prompt_chunks(
        self, step_j: float, begin_s: float, end_s: float, parts: dict[str, Part]
    ) -> None:
        """Prompts waiting for their first output, in arrival order, take what the step's energy leaves
        beside the work seen in it: a server that caps a step's tokens (greenlm serve's --step-tokens,
        vLLM's chunked prefill) processes a long prompt, or a burst of them, over several steps, and the
        gateway sees only the step that ends each one. The room is (E - c_decode * D) / c_prefill - the
        prompt tokens seen; only prompts that arrived before the step began can be in it, and each keeps a
        token for the step of its first output. True when it placed any."""
        costs = self.costs
        if costs.prefill_j_per_token is None or costs.decode_j_per_token is None:
            return False
        c_prefill, c_decode = costs.weights()
        seen = sum(p.prefill * self._prompt_of(self._live[rid]) for rid, p in parts.items())
        decode = sum(p.chunks for p in parts.values())
        room = (step_j - c_decode * decode) / c_prefill - seen
        waiting = sorted(
            (
                r
                for r in self._live.values()
                if r.streaming
                and r.start_s < begin_s
                and r.prefill_done < 1.0
                and (r.first_s is None or r.first_s > end_s)
            ),
            key=lambda r: r.start_s,
        )
        placed = False
        for req in waiting:
            if room <= 0:
                break
            prompt = self._prompt_of(req)
            take = min(room, max(0.0, (1.0 - req.prefill_done) * prompt - 1.0))
            if take <= 0 or prompt <= 0:
                continue
            part = parts.setdefault(req.request_id, Part(req.request_id, True))
            part.prefill += take / prompt
            req.prefill_done += take / prompt
            room -= take
            placed = True
        return placed

    def _prompt_of(self, req: _Request) -> float:
        """Its computed prompt tokens: from its usage once it ended, else as guessed."""
        if req.outcome is not None:
            return float(req.outcome.computed_prompt_tokens)
        return self._prompt_guess(req)

    def _cut(self, t1: float) -> float:
        """Where this window's marks end: at `t1`, unless the last step's chunks began arriving less than the
        step gap before it (more of them may still come, read after the meter): that step waits for the next
        window, whole."""
        marks = []
        for rid, req in self._open.items():
            if not req.streaming:
                continue
            if not req.prefill_placed and req.first_s is not None and req.first_s < t1:
                marks.append(Mark(req.first_s, rid, first=True))
            upto = bisect.bisect_left(req.chunk_times, t1, lo=req.cursor)
            marks += [Mark(c, rid) for c in req.chunk_times[req.cursor : upto]]
        gap = self.step_gap_s
        steps = infer_steps(marks, gap)
        return steps[-1][0].time_s if steps and steps[-1][0].time_s > t1 - gap else t1

    @property
    def step_gap_s(self) -> float:
        """How close chunks arrive to be one step (see `attribution.step_gap_s`)."""
        return step_gap_s(list(self._intervals))

    def _parts(self, t0: float, t1: float, cut: float) -> tuple[dict[str, Part], list[Mark]]:
        """What each request in flight in [t0, t1] was seen doing there, and its streams' chunk arrivals before
        `cut` (the rest, and requests that end after it, are the next window's)."""
        parts: dict[str, Part] = {}
        marks: list[Mark] = []
        for rid, req in list(self._open.items()):
            if req.start_s >= t1:
                continue
            end = req.end_s if req.end_s is not None else t1
            part = Part(rid, req.streaming, overlap_s=max(0.0, min(t1, end) - max(t0, req.start_s)))
            if not req.prefill_placed and req.first_s is not None and req.first_s < cut:
                part.first, part.prefill, req.prefill_placed = True, 1.0 - req.prefill_done, True
                if req.streaming:
                    marks.append(Mark(req.first_s, rid, first=True))
            ended = req.end_s is not None and req.end_s <= cut
            if req.streaming:
                upto = bisect.bisect_left(req.chunk_times, cut, lo=req.cursor)
                if ended:
                    upto = len(req.chunk_times)  # chunks noted late: this window's
                marks += [Mark(c, rid) for c in req.chunk_times[req.cursor : upto]]
                part.chunks, req.cursor = upto - req.cursor, upto
            parts[rid] = part
            if ended:
                req.covered = True
                del self._open[rid]
        return parts, marks

    # ---- charging -----------------------------------------------------------------------------------------
    def charge(self, request_id: str) -> Charge:
        """The request's energy: its part of every window it was in (see `attribution`). Call once it is
        `ready`; the figure is final."""
        with self._lock:
            req = self._live.get(request_id)
            if req is None or not req.covered or req.outcome is None:
                raise ValueError(
                    f"request {request_id} has not ended, or a window has not closed after its end"
                )
            prefill_j = decode_j = carbon = 0.0
            for window in req.windows:
                p, d = self._take(window, req)
                prefill_j += p
                decode_j += d
                carbon += (p + d) * window.carbon_per_j
            del self._live[request_id]
            t = self.totals
            t.prefill_j += prefill_j
            t.decode_j += decode_j
            t.requests += 1
            t.output_tokens += req.outcome.completion_tokens
            self._recent_tokens.append((req.end_s, req.outcome.completion_tokens))
            while self._recent_tokens and self._recent_tokens[0][0] < req.end_s - RECENT_S:
                self._recent_tokens.popleft()
            self._settle()
            return Charge(prefill_j, decode_j, carbon, len(req.windows))  # req.windows: its steps

    def _take(self, window: _Step, req: _Request) -> tuple[float, float]:
        mine_part = window.parts[req.request_id]
        mine = final_work(mine_part, req.outcome)
        mine_part.final = mine
        window.unsettled.discard(req.request_id)
        known: list[tuple[Part, Work]] = [(mine_part, mine)]
        pending: list[tuple[Part, _Request]] = []
        for rid in window.unsettled:
            other = self._live[rid]
            part = window.parts[rid]
            if other.outcome is not None:
                known.append((part, final_work(part, other.outcome)))
            else:
                pending.append((part, other))
        rate = decode_rate(known)
        others = [w for p, w in known[1:]]
        others += [estimate_work(part, self._prompt_guess(other), rate) for part, other in pending]
        prefill, decode = share_of(window.remaining_j, mine, others, window.costs)
        window.remaining_j = max(0.0, window.remaining_j - prefill - decode)
        if not window.unsettled and window.remaining_j > 0:  # the last one had no token here: nobody's
            self.totals.idle_j += window.remaining_j
            self.totals.unattributed_j += window.remaining_j
            window.remaining_j = 0.0
        return prefill, decode

    def _prompt_guess(self, req: _Request) -> float:
        """A running request's computed prompt tokens: counted at its start (else estimated from its
        characters), less the share recent requests took from the upstream's prefix cache (a request's own
        cached tokens are known only from its usage, at its end)."""
        prompt = req.prompt_tokens
        if prompt is None:
            prompt = prompt_estimate(req.prompt_chars, self.chars_per_token)
        return prompt * (1.0 - self.cached_share)

    @property
    def cached_share(self) -> float:
        """The share of recent requests' prompt tokens the upstream took from its prefix cache."""
        return self._cached / self._prompted if self._prompted else 0.0

    def _settle(self) -> None:
        """Drop fully charged steps (wherever they are: under load the oldest one open waits for its longest
        request), learning J/token from them (serve's rule on those with one kind of work; the fit on all)."""
        settled = [w for w in self._windows if not w.unsettled]
        if not settled:
            return
        self._windows = deque(w for w in self._windows if w.unsettled)
        for window in settled:
            work = [
                StepWork(p.request_id, p.final.prefill_tokens, p.final.decode_tokens)
                for p in window.parts.values()
                if p.final is not None
            ]
            if window.inferred or not work or not any(w.tokens > 0 for w in work):
                continue  # (costs learned from tokens placed by the costs would feed on themselves)
            self._pure = update_costs(self._pure, window.energy_j, work)
            self._fit = self._fit.add(
                window.energy_j, sum(w.prefill_tokens for w in work), sum(w.decode_tokens for w in work)
            )
        self._choose_costs()

    def _choose_costs(self) -> None:
        """The split's weights: the upstream's own when it publishes them (`use_upstream_costs`), else serve's
        rule on the steps the gateway told apart (J/token of steps with one kind of work), else a fit of
        steps' energy to both kinds of tokens, else what was given or equal weights."""
        if self._upstream_costs is not None:
            self.costs, self.costs_source = self._upstream_costs
            return
        pure, fitted = self._pure, self._fit.costs()
        if pure.prefill_j_per_token is not None and pure.decode_j_per_token is not None:
            self.costs, self.costs_source = pure, "steps with one kind of work (serve's rule)"
        elif fitted is not None:
            self.costs, self.costs_source = fitted, f"least-squares fit over {self._fit.windows} steps"
        else:
            self.costs, self.costs_source = self._given

    def use_upstream_costs(self, costs: PhaseCosts | None, source: str) -> None:
        """Split by the upstream's own J/token of prefill and decode (greenlm serve publishes the weights its
        split uses in /energy's phase_costs), said in `source`; None: back to the gateway's own."""
        with self._lock:
            known = costs is not None and costs.prefill_j_per_token and costs.decode_j_per_token
            self._upstream_costs = (costs, source) if known else None
            self._choose_costs()

    # ---- reading the account ------------------------------------------------------------------------------
    def snapshot(self) -> dict:
        with self._lock:
            t = self.totals
            life = self.meter.measure(self._start, self._last)
            pending_j = sum(w.remaining_j for w in self._windows) + t.carry_j
            requests_j = t.prefill_j + t.decode_j
            seconds = sum(d for _, d, _ in self._recent)
            joules = sum(e for _, _, e in self._recent)
            tokens = sum(n for _, n in self._recent_tokens)
            in_flight = len(self._live)
            snap = {
                "meter": life.meter,
                "energy_source": life.energy_source,
                "duration_s": life.duration_s,
                "requests_j": requests_j,
                "prefill_j": t.prefill_j,
                "decode_j": t.decode_j,
                "idle_j": t.idle_j,
                "unattributed_j": t.unattributed_j,
                "pending_j": pending_j,
                "windows_j": t.windows_j,
                "meter_total_j": life.total_j,
                "windows": t.windows,
                "steps": t.steps,
                "idle_windows": t.idle_windows,
                "carried_windows": t.carried_windows,
                "requests": t.requests,
                "in_flight": in_flight,
                "carbon_g": t.carbon_g,
                "intensity_g_per_kwh": self.intensity_g_per_kwh,
                "output_tokens": t.output_tokens,
                "phase_costs": {**self.costs.to_dict(), "source": self.costs_source},
                "chars_per_token": self.chars_per_token,
                "cached_share": self.cached_share,
                "recent_s": seconds,
                "power_w": joules / seconds if seconds > 0 else 0.0,
                "tokens_per_j": tokens / joules if joules > 0 else 0.0,
            }
        gap = requests_j + t.idle_j + pending_j - life.total_j
        snap["invariant_gap_j"] = gap
        snap["invariant_gap_rel"] = abs(gap) / life.total_j if life.total_j > 0 else 0.0
        return snap
