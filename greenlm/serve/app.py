"""The HTTP app: OpenAI's routes over a `Server`, thin. `create_app(server)` is all a front end needs
(uvicorn in `greenlm serve`, a Ray Serve deployment).

    POST /v1/chat/completions   POST /v1/completions   GET /v1/models
    GET /health                 GET /metrics (Prometheus)   GET /energy (the energy account as JSON)
    GET /dashboard              GET /dashboard/data (what the dashboard draws, as JSON)
    /v1/files, /v1/batches      OpenAI's Batch API (greenlm.defer.routes), run when the grid is clean

Errors use OpenAI's shape, {"error": {"message", "type", "param", "code"}} (`middleware`). With an API key,
/v1/*, /energy and /dashboard want it (`auth`); /health and /metrics stay open. Bodies over the size limit
get 413 before any parsing (a batch file upload: --batch-max-file-bytes). The routes are in `routes` (the status
routes, shared with the gateway, in `status`; the Batch API's in `greenlm.defer.routes`), the streamed chunks in
`streaming`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Depends

from greenlm.defer.routes import batch_router
from greenlm.serve.auth import require_key
from greenlm.serve.middleware import BodyLimit
from greenlm.serve.routes import openai_router
from greenlm.serve.server import Server
from greenlm.serve.status import front_app

UPLOAD_OVERHEAD_BYTES = 64 * 1024  # a multipart upload's boundaries and headers around the file


def create_app(
    server: Server,
    *,
    metrics: Callable[[], Awaitable[bytes]] | None = None,
    energy: Callable[[], Awaitable[dict]] | None = None,
) -> BodyLimit:
    """`metrics` and `energy` (async callables): what /metrics and /energy answer instead of this server's own
    (a Ray Serve replica answers for every replica)."""
    files_limit = max(
        server.config.max_body_bytes, server.config.batch_max_file_bytes + UPLOAD_OVERHEAD_BYTES
    )
    return front_app(
        "greenlm serve",
        server,
        [openai_router, batch_router([Depends(require_key)])],
        metrics=metrics,
        energy=energy,
        state={"deferral": server.deferral},
        limits_by_path={"/v1/files": files_limit},
    )
