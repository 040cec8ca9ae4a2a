"""The gateway's HTTP app: OpenAI's routes relayed to the upstreams, and greenlm's status routes.

    POST /v1/chat/completions   POST /v1/completions   GET /v1/models
    GET /health   GET /metrics (Prometheus)   GET /energy   GET /dashboard   GET /dashboard/data

As greenlm serve: errors in OpenAI's shape, bodies over the size limit get 413 before any parsing, and with
an API key /v1/*, /energy and /dashboard want it while /health and /metrics stay open. The status routes and
the dashboard are serve's (`greenlm.serve.status`), over the gateway.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from greenlm.gateway.gateway import Gateway
from greenlm.serve.auth import require_key
from greenlm.serve.middleware import BodyLimit
from greenlm.serve.protocol import ModelCard, ModelList
from greenlm.serve.status import front_app, front_end

Served = Annotated[Gateway, Depends(front_end)]
openai_router = APIRouter(prefix="/v1", dependencies=[Depends(require_key)])


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
    return front_app("greenlm gateway", gateway, [openai_router])
