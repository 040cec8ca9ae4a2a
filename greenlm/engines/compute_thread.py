"""Run work that computes with llama.cpp (or torch) in a thread of its own, and wait for it.

Both compute through OpenMP, and libgomp keeps a team of worker threads for every thread that ever ran a
parallel region. When a second thread computes too (a server's scheduler thread, after the model was loaded
and warmed up in the main thread), libgomp counts more threads than CPUs and throttles its spin-waits, so the
threads of every step sleep and wake at each barrier instead of spinning: on the built-in model with 2 threads,
llama.cpp decoded at about half speed in greenlm serve that way (bench/serve_profile.py measures it before and
after). A thread that exits takes its team with it, so a server loads and warms up its first model in a
short-lived thread and leaves the scheduler's thread as the only one that computes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def run_in_own_thread(fn: Callable[..., T], *args, name: str = "greenlm-load", **kwargs) -> T:
    """`fn(*args, **kwargs)` in a new thread that exits when it returns; its result, or its exception."""
    outcome: dict = {}

    def target() -> None:
        try:
            outcome["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # re-raised in the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
