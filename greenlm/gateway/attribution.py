"""How the gateway divides an upstream's metered energy among requests it only watches from outside: pure
functions over numbers (no meter, no clock), beside serve's own split (`greenlm.serve.attribution`), whose
weights and learned J/token they reuse.

The meter is read at window edges (a fixed interval; a local meter also at each request's end). Inside a window
the gateway tells the upstream's engine steps apart as greenlm serve meters them from inside: a batching server
sends every running request's token of a step when the step ends, so the chunks that arrive together are one step
(`infer_steps`). Power is taken as constant within a window: a step owns the time since the previous step's
chunks (`step_energies`; the tail after a window's last step goes to the next step, in the next window). A
step's energy E goes to the requests seen in it as greenlm serve splits a step:

    w_r = P_r * c_prefill + D_r * c_decode        share_r = E * w_r / sum(w)

What the gateway sees of a request in a step (a `Part`):
* a streamed request: its prompt's P computed tokens (less what its upstream took from its prefix cache) in the
  step of its first output chunk, and one later output chunk (decode), each worth (N - 1) / (K - 1) tokens once
  the request ends with N output tokens in K chunks;
* a non-streaming request: its P prompt tokens in its first step, its N - 1 decode tokens spread uniformly over
  its lifetime (its tokens are only seen at its end), and its end ends a step.

A request's energy is fixed when it ends (its usage carries it): in each of its steps it takes its part of what is
still unassigned, R * w_r / (w_r + sum of the others' weights), the others' weights as known then (a request still
running is estimated: `estimate_work`); the last request of a step takes what remains. So each step's shares sum
to the step exactly, whatever the estimates were, and a request's figure never changes after it was reported.
With exact weights the sequential shares equal the proportional split (`share_of` telescopes). A window in which
requests were in flight but none processed a token (a long prefill) is carried into the next window; a window
with no request in flight is idle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from greenlm.serve.attribution import PhaseCosts

CHARS_PER_TOKEN_PRIOR = 4.0  # OpenAI's rule of thumb for English text, until a request's usage says otherwise


@dataclass
class Part:
    """What one request was seen doing in one window, or one step of it."""

    request_id: str
    streaming: bool
    first: bool = False  # its first output came out here (non-streaming: its first step)
    prefill: float = 0.0  # the share of its prompt processed here (all of it by its first output, or a chunk)
    chunks: int = 0  # output chunks after the first that arrived here (streamed requests)
    overlap_s: float = 0.0  # seconds of the window it was in flight
    final: Work | None = None  # its tokens here, once it ended and was charged

    @property
    def seen_work(self) -> bool:
        """Whether the gateway saw (or, for a non-streaming request, will spread) any token here."""
        return (
            self.first or self.prefill > 0 or self.chunks > 0 or (not self.streaming and self.overlap_s > 0)
        )


@dataclass(frozen=True)
class Work:
    """Tokens processed in one window (fractions: a non-streaming request's decode is spread over time)."""

    prefill_tokens: float = 0.0
    decode_tokens: float = 0.0

    def weight(self, costs: PhaseCosts) -> float:
        c_prefill, c_decode = costs.weights()
        return self.prefill_tokens * c_prefill + self.decode_tokens * c_decode


@dataclass(frozen=True)
class Outcome:
    """A request's final counts: prompt and output tokens, output chunks seen, lifetime, and the prompt tokens
    the upstream took from its prefix cache (`prompt_tokens_details.cached_tokens`: not computed, not charged)."""

    prompt_tokens: int
    completion_tokens: int
    content_chunks: int
    life_s: float
    cached_tokens: int = 0

    @property
    def computed_prompt_tokens(self) -> int:
        return max(0, self.prompt_tokens - self.cached_tokens)


def final_work(part: Part, outcome: Outcome) -> Work:
    """The tokens a request that ended with `outcome` processed in the window of `part`."""
    prompt = outcome.computed_prompt_tokens * part.prefill
    decode_total = max(0, outcome.completion_tokens - 1)  # the first output token comes out of the prefill
    if part.streaming:
        if outcome.content_chunks <= 1:  # all its output in one chunk: decoded where that chunk came
            return Work(prompt, decode_total if part.first else 0.0)
        return Work(prompt, part.chunks * decode_total / (outcome.content_chunks - 1))
    if outcome.life_s <= 0:
        return Work(prompt, decode_total if part.first else 0.0)
    return Work(prompt, decode_total * min(part.overlap_s, outcome.life_s) / outcome.life_s)


def estimate_work(part: Part, prompt_tokens: float, decode_rate: float | None) -> Work:
    """A running request's tokens in a closed window, as far as they are known: a streamed request's chunks
    count one token each and its prompt `prompt_tokens` (known, or estimated from its characters); a
    non-streaming request is assumed to decode at `decode_rate` tokens/s (the mean of the requests whose tokens
    in this window are known: a batching server gives each running request one token per step)."""
    prompt = prompt_tokens * part.prefill
    if part.streaming:
        return Work(prompt, float(part.chunks))
    return Work(prompt, (decode_rate or 0.0) * part.overlap_s)


def decode_rate(known: list[tuple[Part, Work]]) -> float | None:
    """Mean decode tokens per second of in-flight time over the requests of a window whose work is known."""
    rates = [w.decode_tokens / p.overlap_s for p, w in known if w.decode_tokens > 0 and p.overlap_s > 0]
    return sum(rates) / len(rates) if rates else None


def share_of(remaining_j: float, mine: Work, others: list[Work], costs: PhaseCosts) -> tuple[float, float]:
    """(prefill J, decode J) of a request whose work in a window is `mine`, from the `remaining_j` not yet
    assigned there, beside `others` (the work of the window's requests not yet charged). The last request of a
    window (no others) takes all that remains when it processed anything there."""
    if not (math.isfinite(remaining_j) and remaining_j >= 0):
        raise ValueError(f"remaining energy must be finite and >= 0 J, got {remaining_j!r}")
    weight = mine.weight(costs)
    if weight <= 0:
        return 0.0, 0.0
    total = weight + sum(w.weight(costs) for w in others)
    part = remaining_j if not others else remaining_j * weight / total
    part = min(max(0.0, part), remaining_j)
    c_prefill, _ = costs.weights()
    prefill = min(part, part * mine.prefill_tokens * c_prefill / weight)
    return prefill, part - prefill


@dataclass(frozen=True)
class Mark:
    """An output chunk's arrival: the end of the engine step that produced it, seen from outside."""

    time_s: float
    request_id: str
    first: bool = False  # the request's first output: its prompt was processed in that step


STEP_GAP_S = 0.003  # chunks arriving within this of a step's first chunk came out of the same step, at least
GAP_OF_INTERVAL = (
    0.5  # and within this share of the typical interval between a stream's chunks (a step's time)
)


def step_gap_s(intervals: list[float]) -> float:
    """How close chunks must arrive to be one step: half the median interval between consecutive chunks of a
    stream (a step's time; the gateway's own loop, held up by a busy CPU, may read a step's chunks some
    milliseconds apart), at least STEP_GAP_S."""
    if not intervals:
        return STEP_GAP_S
    ordered = sorted(intervals)
    return max(STEP_GAP_S, GAP_OF_INTERVAL * ordered[len(ordered) // 2])


def infer_steps(marks: list[Mark], gap_s: float = STEP_GAP_S) -> list[list[Mark]]:
    """The engine steps behind a window's output chunks, in time order: a batching server sends every running
    request's token of a step at the step's end, so chunks that arrive together (within `gap_s` of the step's
    first) are one step; a second chunk of the same request starts the next step."""
    steps: list[list[Mark]] = []
    seen: set[str] = set()
    for mark in sorted(marks, key=lambda m: m.time_s):
        if not steps or mark.time_s - steps[-1][0].time_s > gap_s or mark.request_id in seen:
            steps.append([])
            seen = set()
        steps[-1].append(mark)
        seen.add(mark.request_id)
    return steps


def step_energies(
    t0: float, t1: float, energy_j: float, ends: list[float], carry_j: float = 0.0
) -> tuple[list[float], float]:
    """(each step's energy, the tail's) for a window [t0, t1] of `energy_j` whose steps' chunks arrived at
    `ends` (ascending, within the window). Within one window the power is taken as constant (a window is a
    second or less; a server under load draws about the same from step to step): a step owns the time since
    the previous step's chunks arrived, the first one also `carry_j` (the tail of the window before: the part
    of this step that ran before the window's edge). The tail, after the last step's chunks, belongs to the
    next step (the next window's first)."""
    if not ends:
        return [], energy_j + carry_j
    if t1 <= t0:  # two readings at one instant: nothing to spread over time
        return [energy_j + carry_j] + [0.0] * (len(ends) - 1), 0.0
    power_w = energy_j / (t1 - t0)
    clamped = [min(max(e, t0), t1) for e in ends]
    spans = [b - a for a, b in zip([t0, *clamped[:-1]], clamped, strict=True)]
    energies = [power_w * span for span in spans]
    energies[0] += carry_j
    tail = max(0.0, energy_j + carry_j - sum(energies))
    return energies, tail


def prompt_estimate(prompt_chars: int, chars_per_token: float) -> float:
    """Prompt tokens of a request whose count is not known yet, from its characters."""
    return prompt_chars / chars_per_token if chars_per_token > 0 else 0.0


@dataclass(frozen=True)
class CostFit:
    """J per prefill and per decode token fitted to settled steps: least squares of each step's energy on its
    prefill and decode tokens, E ~ c_prefill * P + c_decode * D, older steps fading (each new one multiplies the
    old sums by `decay`). The fallback while no step with prompt tokens only (what `PhaseCosts` learns prefill
    from) has been seen: under load every step with a prompt also decodes; the fit uses them all."""

    spp: float = 0.0
    spd: float = 0.0
    sdd: float = 0.0
    sep: float = 0.0
    sed: float = 0.0
    windows: int = 0
    decay: float = 0.98

    def add(self, energy_j: float, prefill_tokens: float, decode_tokens: float) -> CostFit:
        d, p, t = self.decay, prefill_tokens, decode_tokens
        return CostFit(
            d * self.spp + p * p, d * self.spd + p * t, d * self.sdd + t * t,
            d * self.sep + energy_j * p, d * self.sed + energy_j * t, self.windows + 1, d,
        )  # fmt: skip

    def costs(self, min_windows: int = 8) -> PhaseCosts | None:
        """The fitted costs, or None while the fit is not determined (too few windows, one kind of work only,
        or a solution that is not positive)."""
        det = self.spp * self.sdd - self.spd * self.spd
        if self.windows < min_windows or self.spp <= 0 or self.sdd <= 0 or det <= 1e-6 * self.spp * self.sdd:
            return None
        c_prefill = (self.sep * self.sdd - self.sed * self.spd) / det
        c_decode = (self.sed * self.spp - self.sep * self.spd) / det
        if not (c_prefill > 0 and c_decode > 0 and math.isfinite(c_prefill) and math.isfinite(c_decode)):
            return None
        return PhaseCosts(c_prefill, c_decode)
