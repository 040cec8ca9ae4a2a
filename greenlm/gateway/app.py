"""The gateway's HTTP app: OpenAI's routes relayed to the upstreams, and greenlm's status routes.

    POST /v1/chat/completions   POST /v1/completions   GET /v1/models
    GET /health   GET /metrics (Prometheus)   GET /energy   GET /dashboard   GET /dashboard/data

As greenlm serve: errors in OpenAI's shape, bodies over the size limit get 413 before any parsing, and with
an API key /v1/*, /energy and /dashboard want it while /health and /metrics stay open. The dashboard is
serve's, over the gateway's view.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, Response

from greenlm.gateway.gateway import Gateway
from greenlm.gateway.metrics import CONTENT_TYPE
from greenlm.serve.auth import require_key, require_key_or_sign_in
from greenlm.serve.dashboard import dashboard_html, dashboard_view
from greenlm.serve.middleware import BodyLimit, error_response, install_error_handlers
from greenlm.serve.protocol import ModelCard, ModelList


def _gateway(request: Request) -> Gateway:
    return request.app.state.gateway


Served = Annotated[Gateway, Depends(_gateway)]
status_router = APIRouter()
openai_router = APIRouter(prefix="/v1", dependencies=[Depends(require_key)])


@status_router.get("/health")
async def health(gateway: Served):
    if not gateway.healthy():
        down = "; ".join(f"{u.name}: {u.reason}" for u in gateway.upstreams)
        return error_response(503, f"no upstream is up ({down})", "server_error", code="no_upstream")
    return {"status": "ok", "model": gateway.model_id, "upstreams": {u.name: u.up for u in gateway.upstreams}}


@status_router.get("/metrics")
async def metrics(gateway: Served):
    return Response(await asyncio.to_thread(gateway.metrics.render), media_type=CONTENT_TYPE)


@status_router.get("/energy", dependencies=[Depends(require_key)])
async def energy(gateway: Served):
    return await asyncio.to_thread(gateway.energy)


@status_router.get("/dashboard", dependencies=[Depends(require_key_or_sign_in)])
async def dashboard():
    return HTMLResponse(dashboard_html(), headers={"Cache-Control": "no-cache"})


@status_router.get("/dashboard/data", dependencies=[Depends(require_key_or_sign_in)])
async def dashboard_data(gateway: Served, since: int = 0):
    return await asyncio.to_thread(dashboard_view, gateway, gateway.controller, since)


@openai_router.get("/models")
async def models(gateway: Served):
    groups = gateway.groups
    card = ModelCard(
        id=gateway.model_id,
        created=int(gateway.started_s),
        owned_by="greenlm-gateway",
        engine="gateway",
        meter="+".join(sorted({g.meter.name for g in groups})),
        energy_source="measured" if all(g.meter.energy_source == "measured" for g in groups) else "estimated",
        variant=gateway.active,
        variants=gateway.variants(),
    )
    return ModelList(data=[card])


@openai_router.post("/chat/completions")
async def chat(request: Request, gateway: Served):
    return await gateway.relay.handle(request, "/v1/chat/completions")


@openai_router.post("/completions")
async def completions(request: Request, gateway: Served):
    return await gateway.relay.handle(request, "/v1/completions")


def create_gateway_app(gateway: Gateway) -> BodyLimit:
    app = FastAPI(title="greenlm gateway", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.gateway = gateway
    app.state.api_key = gateway.config.api_key
    install_error_handlers(app)
    app.include_router(status_router)
    app.include_router(openai_router)
    return BodyLimit(app, gateway.config.max_body_bytes)
