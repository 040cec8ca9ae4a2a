"""What the load and quality policies look at, seen from the gateway: requests in flight, recent times to
first token, idle time, the tokens requests in flight may still generate (by upstream). The upstream's own
queue is invisible from outside: its wait is inside the time to first token."""

from __future__ import annotations

import threading
import time
from collections import deque

from greenlm.serve.policies import p90

KEEP_S = 600.0


class LoadTracker:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[
            str, tuple[str, int]
        ] = {}  # request id -> (upstream, tokens it may still generate)
        self._ttft: deque[tuple[float, float]] = deque()
        self._peak = 0
        self._last_busy_s = time.perf_counter()

    def start(self, request_id: str, upstream: str, max_tokens: int | None) -> None:
        with self._lock:
            self._running[request_id] = (upstream, max_tokens or 0)
            self._peak = max(self._peak, len(self._running))

    def moved(self, request_id: str, upstream: str) -> None:
        """A retry: the request now runs on `upstream`."""
        with self._lock:
            if request_id in self._running:
                self._running[request_id] = (upstream, self._running[request_id][1])

    def token(self, request_id: str) -> None:
        with self._lock:
            if request_id in self._running:
                name, left = self._running[request_id]
                self._running[request_id] = (name, max(0, left - 1))

    def first_token(self, ttft_s: float) -> None:
        now = time.perf_counter()
        with self._lock:
            self._ttft.append((now, ttft_s))
            while self._ttft and self._ttft[0][0] < now - KEEP_S:
                self._ttft.popleft()

    def finish(self, request_id: str) -> None:
        with self._lock:
            self._running.pop(request_id, None)
            self._last_busy_s = time.perf_counter()

    @property
    def running(self) -> int:
        return len(self._running)

    def stats(self, recent_s: float, *, reset_peak: bool = True) -> dict:
        now = time.perf_counter()
        with self._lock:
            ttft = [v for t, v in self._ttft if t >= now - recent_s]
            peak = self._peak
            if reset_peak:
                self._peak = len(self._running)
            pending: dict[str | None, int] = {}
            for name, left in self._running.values():
                pending[name] = pending.get(name, 0) + left
            idle_s = 0.0 if self._running else now - self._last_busy_s
            running = len(self._running)
        return {
            "ttft_p90_s": p90(ttft),
            "queue_p90_s": None,  # the upstream's queue: inside its time to first token
            "oldest_wait_s": 0.0,
            "peak_concurrency": peak,
            "running": running,
            "waiting": 0,
            "idle_s": idle_s,
            "pending_tokens": pending,
        }
