"""What the planner knows of the server it plans for, measured from the deferred work itself: its throughput at
a full batch (tokens of deferred requests finished per wall second while deferred work ran, each second counted
by the share of a full batch it had in flight: a batch's tail, or slots the interactive load held, do not make
the server look slower than it is), the pace of one request by itself, and the energy per token (the finished
requests' metered energy). Kept in the state directory per model, so a restarted server plans from the first
tick."""

from __future__ import annotations

from collections import deque

WINDOW_TICKS = 400  # the busy ticks the throughput averages over
WINDOW_LINES = 500  # the finished requests J/token averages over


class Rates:
    def __init__(self, known: dict | None = None):
        self._ticks: deque[tuple[float, int, int]] = deque(
            maxlen=WINDOW_TICKS
        )  # (full-batch s, tokens, requests)
        self._lines: deque[tuple[int, float, float]] = deque(maxlen=WINDOW_LINES)  # (tokens, J, seconds)
        known = known or {}
        self._kept_capacity = known.get("capacity_tokens_per_s")
        self._kept_j_per_token = known.get("j_per_token")

    def tick(self, busy_s: float, tokens: int, requests: int, batch_share: float = 1.0) -> None:
        """One tick in which deferred work ran for `busy_s` with `batch_share` of a full batch in flight, and
        `requests` finished with `tokens`."""
        if busy_s > 0:
            self._ticks.append((busy_s * min(1.0, max(batch_share, 1e-3)), tokens, requests))

    def line(self, tokens: int, energy_j: float, seconds: float = 0.0) -> None:
        if tokens > 0 and energy_j >= 0:
            self._lines.append((tokens, energy_j, seconds))

    def request_tokens_per_s(self) -> float | None:
        """How fast one request goes through (its tokens over its own time, the median): a batch's last request
        takes at least its tokens at this speed, however much capacity is free."""
        speeds = sorted(t / s for t, _, s in self._lines if s > 0)
        return speeds[len(speeds) // 2] if speeds else None

    def measured_requests(self) -> int:
        return sum(r for _, _, r in self._ticks)

    def capacity_tokens_per_s(self, min_requests: int) -> float | None:
        """Measured once `min_requests` (a full batch) finished; the kept figure until then; None: unknown."""
        busy = sum(b for b, _, _ in self._ticks)
        tokens = sum(t for _, t, _ in self._ticks)
        if self.measured_requests() >= min_requests and busy > 0 and tokens > 0:
            return tokens / busy
        return self._kept_capacity

    def j_per_token(self) -> float | None:
        tokens = sum(t for t, _, _ in self._lines)
        if tokens > 0:
            return sum(j for _, j, _ in self._lines) / tokens
        return self._kept_j_per_token

    def to_dict(self, min_requests: int) -> dict:
        return {
            "capacity_tokens_per_s": self.capacity_tokens_per_s(min_requests),
            "j_per_token": self.j_per_token(),
        }
