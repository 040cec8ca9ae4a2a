"""A daemon thread that calls a meter method at a fixed interval, for the meters that need one."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def start_ticker(
    owner: T, tick: Callable[[T], bool | None], interval_s: float, stop: threading.Event, name: str
) -> threading.Thread:
    """Call tick(owner) every interval_s until `stop` is set, tick returns False, or owner is gone.

    The thread holds the owner only weakly (pass an unbound method as tick), so a meter that nobody
    closed is still garbage-collected and its thread ends with it.
    """
    ref = weakref.ref(owner)

    def loop() -> None:
        while not stop.wait(interval_s):
            obj = ref()
            if obj is None or tick(obj) is False:
                return
            del obj

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    return thread
