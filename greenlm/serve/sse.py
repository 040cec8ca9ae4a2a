"""Server-sent events, as every greenlm front end frames them (serve's streamed completions, the gateway's relay
of an upstream's stream), and the watch for a client that goes away. No model, no scheduler: light to import."""

from __future__ import annotations

import json
from collections.abc import Callable

from fastapi import Request

SSE_DONE = "data: [DONE]\n\n"


def sse(payload) -> str:
    """One server-sent event: a pydantic model or a JSON-able value."""
    body = payload.model_dump_json() if hasattr(payload, "model_dump_json") else json.dumps(payload)
    return f"data: {body}\n\n"


async def watch_disconnect(request: Request, cancel: Callable[[], None]) -> None:
    """Call `cancel` when the client goes away (a request's slot frees at the next step)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            cancel()
            return
