"""The HTTP app: OpenAI's routes over a `Server`, thin. `create_app(server)` is all a front end needs
(uvicorn in `greenlm serve`, a Ray Serve deployment).

    POST /v1/chat/completions   POST /v1/completions   GET /v1/models
    GET /health                 GET /metrics (Prometheus)   GET /energy (the energy account as JSON)
    GET /dashboard              GET /dashboard/data (what the dashboard draws, as JSON)

Errors use OpenAI's shape, {"error": {"message", "type", "param", "code"}} (`middleware`). With an API key,
/v1/*, /energy and /dashboard want it (`auth`); /health and /metrics stay open. Bodies over the size limit
get 413 before any parsing. The routes are in `routes` (the status routes, shared with the gateway, in
`status`), the streamed chunks in `streaming`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from greenlm.serve.middleware import BodyLimit
from greenlm.serve.routes import openai_router
from greenlm.serve.server import Server
from greenlm.serve.status import front_app


def create_app(
    server: Server,
    *,
    metrics: Callable[[], Awaitable[bytes]] | None = None,
    energy: Callable[[], Awaitable[dict]] | None = None,
) -> BodyLimit:
    """`metrics` and `energy` (async callables): what /metrics and /energy answer instead of this server's own
    (a Ray Serve replica answers for every replica)."""
    return front_app("greenlm serve", server, [openai_router], metrics=metrics, energy=energy)
