"""How a server's energy is divided: pure functions over numbers, no meter, no threads.

The server's life is cut into consecutive meter windows with no gap between them: each reading ends one
window and starts the next. A window that ran an engine step (with what came around it: admission,
sampling, streaming) belongs to the requests in that step; a window with no request running is idle and
belongs to nobody. So over any span, sum of request energy + idle energy = the sum of the windows, which is
the meter's own total for the span.

The split rule for one step of energy E among requests r with P_r prompt (prefill) tokens and D_r decode
tokens processed in it:

    w_r = P_r * c_prefill + D_r * c_decode          share_r = E * w_r / sum(w)

where c_prefill and c_decode are the server's measured J per token of its own prefill-only and decode-only
steps (a moving average; `PhaseCosts`). A request pays in proportion to what its tokens cost when run by
themselves. Its share splits into prefill (P_r * c_prefill / w_r of it) and decode (the rest).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

DEFAULT_SMOOTHING = 0.1  # weight of the newest step in the moving average of J/token


@dataclass(frozen=True)
class StepWork:
    """What one request had processed in one step."""

    request_id: str
    prefill_tokens: int = 0
    decode_tokens: int = 0

    @property
    def tokens(self) -> int:
        return self.prefill_tokens + self.decode_tokens


@dataclass(frozen=True)
class Share:
    request_id: str
    prefill_j: float
    decode_j: float

    @property
    def energy_j(self) -> float:
        return self.prefill_j + self.decode_j


@dataclass(frozen=True)
class PhaseCosts:
    """Measured J per token of prefill-only and decode-only steps (None until one such step ran)."""

    prefill_j_per_token: float | None = None
    decode_j_per_token: float | None = None

    def weights(self) -> tuple[float, float]:
        """(prefill, decode) weight per token; equal weights until both phases have been measured."""
        p, d = self.prefill_j_per_token, self.decode_j_per_token
        if p is None or d is None or p <= 0 or d <= 0:
            return 1.0, 1.0
        return p, d

    def to_dict(self) -> dict:
        return {
            "prefill_j_per_token": self.prefill_j_per_token,
            "decode_j_per_token": self.decode_j_per_token,
        }


def _check_energy(energy_j: float) -> None:
    if not (math.isfinite(energy_j) and energy_j >= 0):
        raise ValueError(f"step energy must be finite and >= 0 J, got {energy_j!r}")


def split_step(energy_j: float, work: list[StepWork], costs: PhaseCosts) -> list[Share]:
    """Divide one step's energy among the requests in it (see the module docstring). The shares sum to
    `energy_j` (the last one takes the rounding remainder), and none is negative."""
    _check_energy(energy_j)
    if not work:
        raise ValueError("a step with no requests is idle time, not a step to split")
    if any(w.prefill_tokens < 0 or w.decode_tokens < 0 for w in work):
        raise ValueError("token counts cannot be negative")
    c_prefill, c_decode = costs.weights()
    weights = [w.prefill_tokens * c_prefill + w.decode_tokens * c_decode for w in work]
    total = sum(weights)
    if total <= 0:  # no tokens at all (cannot happen in a real step): equal parts
        weights, total = [1.0] * len(work), float(len(work))
    shares: list[Share] = []
    given = 0.0
    for i, (w, weight) in enumerate(zip(work, weights, strict=True)):
        part = energy_j - given if i == len(work) - 1 else energy_j * weight / total
        part = max(0.0, part)
        given += part
        prefill_part = part * (w.prefill_tokens * c_prefill / weight) if weight > 0 else 0.0
        prefill_part = min(part, prefill_part)
        shares.append(Share(w.request_id, prefill_part, part - prefill_part))
    return shares


def update_costs(
    costs: PhaseCosts, energy_j: float, work: list[StepWork], smoothing: float = DEFAULT_SMOOTHING
) -> PhaseCosts:
    """Fold one step into the measured J/token: only steps of one phase say what that phase costs."""
    _check_energy(energy_j)
    prefill = sum(w.prefill_tokens for w in work)
    decode = sum(w.decode_tokens for w in work)
    if prefill and not decode:
        return PhaseCosts(
            _blend(costs.prefill_j_per_token, energy_j / prefill, smoothing), costs.decode_j_per_token
        )
    if decode and not prefill:
        return PhaseCosts(
            costs.prefill_j_per_token, _blend(costs.decode_j_per_token, energy_j / decode, smoothing)
        )
    return costs


def _blend(old: float | None, new: float, smoothing: float) -> float:
    return new if old is None else (1 - smoothing) * old + smoothing * new


@dataclass
class EnergyTotals:
    """Running sums over a server's life: what requests were charged, idle, and the windows themselves."""

    prefill_j: float = 0.0
    decode_j: float = 0.0
    idle_j: float = 0.0
    load_j: float = 0.0  # an adaptive server loading, unloading or re-threading a variant between steps
    windows_j: float = 0.0  # sum of every window the meter measured
    step_windows: int = 0
    idle_windows: int = 0
    load_windows: int = 0

    @property
    def requests_j(self) -> float:
        return self.prefill_j + self.decode_j

    def add_step(self, energy_j: float, shares: list[Share]) -> None:
        self.windows_j += energy_j
        self.step_windows += 1
        for s in shares:
            self.prefill_j += s.prefill_j
            self.decode_j += s.decode_j

    def add_idle(self, energy_j: float) -> None:
        _check_energy(energy_j)
        self.windows_j += energy_j
        self.idle_j += energy_j
        self.idle_windows += 1

    def add_load(self, energy_j: float) -> None:
        _check_energy(energy_j)
        self.windows_j += energy_j
        self.load_j += energy_j
        self.load_windows += 1

    def invariant_gap_j(self) -> float:
        """(requests + idle + load) - windows: zero up to float rounding."""
        return self.requests_j + self.idle_j + self.load_j - self.windows_j
