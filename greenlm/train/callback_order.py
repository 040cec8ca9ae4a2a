"""Put a callback ahead of a transformers Trainer's reporting integrations.

The Trainer builds its callback list as DEFAULT_CALLBACKS + the `report_to` integrations (TensorBoard, W&B,
MLflow, ...) + the callbacks a user passes (transformers trainer.py), and hands each log to them in that order
(CallbackHandler.call_event), each integration writing the step as it gets it. A callback that adds values to
the log in `on_log` must therefore run before them, or they never see its values. Callbacks are handed neither
the Trainer nor its CallbackHandler, but every event method is called by the handler's `call_event`, so the
handler is found one or two frames up the stack and its list reordered, in place: only the handler's own list,
not the list the user passed.
"""

from __future__ import annotations

import logging
import sys

from transformers.trainer_callback import CallbackHandler

log = logging.getLogger(__name__)

_FRAMES_UP = 4  # the event method <- call_event <- CallbackHandler.on_<event>: the handler is within these


def calling_handler(depth: int = 2) -> CallbackHandler | None:
    """The CallbackHandler that is calling the event method `depth` frames up (None when there is none)."""
    frame = sys._getframe(depth)
    for _ in range(_FRAMES_UP):
        if frame is None:
            return None
        owner = frame.f_locals.get("self")
        if isinstance(owner, CallbackHandler):
            return owner
        frame = frame.f_back
    return None


def run_first(callback, handler: CallbackHandler | None) -> bool:
    """Move `callback` to the front of `handler`'s list; False (and a warning, once per callback) when there
    is no handler to reorder. Safe during `call_event`'s loop: the callbacks after `callback` keep their
    positions, so none is skipped or called twice."""
    if handler is None or callback not in handler.callbacks:
        if not getattr(callback, "_order_warned", False):
            callback._order_warned = True
            log.warning(
                "%s could not place itself before the Trainer's reporting integrations: its values reach the "
                "Trainer's log history, and only the integrations after it",
                type(callback).__name__,
            )
        return False
    callbacks = handler.callbacks
    if callbacks[0] is not callback:
        callbacks.remove(callback)
        callbacks.insert(0, callback)
    return True
