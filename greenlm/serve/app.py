"""The HTTP app: OpenAI's routes over a `Server`, thin. `create_app(server)` is all a front end needs
(uvicorn in `greenlm serve`, a Ray Serve deployment).

    POST /v1/chat/completions   POST /v1/completions   GET /v1/models
    GET /health                 GET /metrics (Prometheus)   GET /energy (the energy account as JSON)
    GET /dashboard              GET /dashboard/data (what the dashboard draws, as JSON)
    /v1/files, /v1/batches      OpenAI's Batch API (greenlm.defer.routes), run when the grid is clean

Errors use OpenAI's shape, {"error": {"message", "type", "param", "code"}} (`middleware`). With an API key,
/v1/*, /energy and /dashboard want it (`auth`); /health and /metrics stay open. Bodies over the size limit
get 413 before any parsing (a batch file upload: --batch-max-file-bytes). The routes are in `routes`, the streamed chunks in `streaming`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Depends, FastAPI

from greenlm.defer.routes import batch_router
from greenlm.serve.auth import require_key
from greenlm.serve.middleware import BodyLimit, install_error_handlers
from greenlm.serve.routes import openai_router, status_router
from greenlm.serve.server import Server

UPLOAD_OVERHEAD_BYTES = 64 * 1024  # a multipart upload's boundaries and headers around the file


def create_app(
    server: Server,
    *,
    metrics: Callable[[], Awaitable[bytes]] | None = None,
    energy: Callable[[], Awaitable[dict]] | None = None,
) -> BodyLimit:
    """`metrics` and `energy` (async callables): what /metrics and /energy answer instead of this server's own
    (a Ray Serve replica answers for every replica)."""
    app = FastAPI(title="greenlm serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server
    app.state.api_key = server.config.api_key
    app.state.metrics_text, app.state.energy_account = metrics, energy
    app.state.deferral = server.deferral
    install_error_handlers(app)
    app.include_router(status_router)
    app.include_router(openai_router)
    app.include_router(batch_router([Depends(require_key)]))
    files_limit = max(
        server.config.max_body_bytes, server.config.batch_max_file_bytes + UPLOAD_OVERHEAD_BYTES
    )
    return BodyLimit(app, server.config.max_body_bytes, {"/v1/files": files_limit})
