"""A provider polled in a background thread: `poll_once` every `poll_s` until `close`.

The grid signals and the deferral's forecasters poll remote APIs the same way: the first poll at `start`, one
daemon thread per provider, and a `close` that waits at most one request's time-out."""

from __future__ import annotations

import threading


class Poller:
    """Subclasses define `poll_once` (which must not raise) and set `poll_s`, `timeout_s`, `thread_name`."""

    poll_s: float
    timeout_s: float
    thread_name = "greenlm-grid"

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll_once(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll_once()
            self._stop.wait(self.poll_s)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.timeout_s + 1)
