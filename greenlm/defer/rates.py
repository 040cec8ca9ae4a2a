"""What the planner knows of the server it plans for, measured from the deferred work itself: its throughput
(tokens of deferred requests finished per wall second while deferred work ran, so the interactive load beside
it is already in the figure) and its energy per token (the finished requests' metered energy). Kept in the
state directory per model, so a restarted server plans from the first tick."""

from __future__ import annotations

from collections import deque

WINDOW_TICKS = 400  # the busy ticks the throughput averages over
WINDOW_LINES = 500  # the finished requests J/token averages over


class Rates:
    def __init__(self, known: dict | None = None):
        self._ticks: deque[tuple[float, int, int]] = deque(maxlen=WINDOW_TICKS)  # (busy s, tokens, requests)
        self._lines: deque[tuple[int, float]] = deque(maxlen=WINDOW_LINES)  # (tokens, J)
        known = known or {}
        self._kept_capacity = known.get("capacity_tokens_per_s")
        self._kept_j_per_token = known.get("j_per_token")

    def tick(self, busy_s: float, tokens: int, requests: int) -> None:
        """One tick in which deferred work ran for `busy_s` and `requests` finished with `tokens`."""
        if busy_s > 0:
            self._ticks.append((busy_s, tokens, requests))

    def line(self, tokens: int, energy_j: float) -> None:
        if tokens > 0 and energy_j >= 0:
            self._lines.append((tokens, energy_j))

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
        tokens = sum(t for t, _ in self._lines)
        if tokens > 0:
            return sum(j for _, j in self._lines) / tokens
        return self._kept_j_per_token

    def to_dict(self, min_requests: int) -> dict:
        return {
            "capacity_tokens_per_s": self.capacity_tokens_per_s(min_requests),
            "j_per_token": self.j_per_token(),
        }
