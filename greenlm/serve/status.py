"""What greenlm serve's app and greenlm gateway's app share above the middleware: the status routes over the
app's front end (`app.state.server`: a `Server`, or a `Gateway`; anything with `metrics.render()`, `energy()`,
`health()`, a `controller` and what the dashboard's view reads), and the app itself (`front_app`).

    status_router   GET /health, /metrics (open); GET /energy, /dashboard, /dashboard/data (the API key)

/health answers the front end's `health()` (503 when its status is not ok). /metrics and /energy answer
`app.state.metrics_text()` / `app.state.energy_account()` when the app sets them (a Ray Serve replica answers
for every replica), else the front end's own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, Response

from greenlm.serve.auth import require_key, require_key_or_sign_in
from greenlm.serve.dashboard import dashboard_html, dashboard_view
from greenlm.serve.metrics import CONTENT_TYPE
from greenlm.serve.middleware import BodyLimit, error_response, install_error_handlers

status_router = APIRouter()


def front_end(request: Request):
    return request.app.state.server


@status_router.get("/health")
async def health(request: Request):
    record = front_end(request).health()
    if record["status"] != "ok":
        return error_response(503, record["reason"], "server_error", code=record.get("code"))
    return record


@status_router.get("/metrics")
async def metrics(request: Request):
    source = request.app.state.metrics_text
    body = await (source() if source else asyncio.to_thread(front_end(request).metrics.render))
    return Response(body, media_type=CONTENT_TYPE)


@status_router.get("/energy", dependencies=[Depends(require_key)])
async def energy(request: Request):
    source = request.app.state.energy_account
    return await (source() if source else asyncio.to_thread(front_end(request).energy))


@status_router.get("/dashboard", dependencies=[Depends(require_key_or_sign_in)])
async def dashboard():
    return HTMLResponse(dashboard_html(), headers={"Cache-Control": "no-cache"})


@status_router.get("/dashboard/data", dependencies=[Depends(require_key_or_sign_in)])
async def dashboard_data(request: Request, since: int = 0, defer_since: int = 0):
    target = front_end(request)
    return await asyncio.to_thread(dashboard_view, target, target.controller, since, defer_since)


def front_app(
    title: str,
    target,
    routers: list[APIRouter],
    *,
    metrics: Callable[[], Awaitable[bytes]] | None = None,
    energy: Callable[[], Awaitable[dict]] | None = None,
    state: dict | None = None,
    limits_by_path: dict[str, int] | None = None,
) -> BodyLimit:
    """The app of a front end `target` (its `config` gives the API key and the body limit): OpenAI-shaped
    errors, the status routes, then `routers`, behind the body-size limit (`limits_by_path`: larger ones for
    some paths, a batch file upload). `state`: more of `app.state` the routers read (the deferral)."""
    app = FastAPI(title=title, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = target
    app.state.api_key = target.config.api_key
    app.state.metrics_text, app.state.energy_account = metrics, energy
    for name, value in (state or {}).items():
        setattr(app.state, name, value)
    install_error_handlers(app)
    app.include_router(status_router)
    for router in routers:
        app.include_router(router)
    return BodyLimit(app, target.config.max_body_bytes, limits_by_path)
