"""The HTTP routes over the library object (`Server`), which the app keeps in `app.state.server`.

    status_router   GET /health, /metrics (open); GET /energy, /dashboard, /dashboard/data (the API key)
    openai_router   POST /v1/chat/completions, POST /v1/completions, GET /v1/models (the API key)

/metrics and /energy answer `app.state.metrics_text()` / `app.state.energy_account()` when the app sets them
(a Ray Serve replica answers for every replica), else the server's own.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, ValidationError

from greenlm.serve.auth import require_key, require_key_or_sign_in
from greenlm.serve.dashboard import dashboard_html, dashboard_view
from greenlm.serve.errors import RequestError
from greenlm.serve.metrics import CONTENT_TYPE
from greenlm.serve.middleware import error_response
from greenlm.serve.prepare import check_chat, check_completion, sampling_of
from greenlm.serve.protocol import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList
from greenlm.serve.server import Server
from greenlm.serve.streaming import (
    CHAT,
    COMPLETION,
    ChunkKind,
    collect,
    completion_chunks,
    event_stream,
    flex_wait,
    usage_of,
)


def served(request: Request) -> Server:
    return request.app.state.server


Served = Annotated[Server, Depends(served)]

status_router = APIRouter()
openai_router = APIRouter(prefix="/v1", dependencies=[Depends(require_key)])


# ---- status ---------------------------------------------------------------------------------------------
@status_router.get("/health")
async def health(server: Served):
    if not server.healthy():
        return error_response(503, "the serving loop has stopped", "server_error")
    return {"status": "ok", "model": server.model_id}


@status_router.get("/metrics")
async def metrics(request: Request, server: Served):
    source = request.app.state.metrics_text
    body = await (source() if source else asyncio.to_thread(server.metrics.render))
    return Response(body, media_type=CONTENT_TYPE)


@status_router.get("/energy", dependencies=[Depends(require_key)])
async def energy(request: Request, server: Served):
    source = request.app.state.energy_account
    return await (source() if source else asyncio.to_thread(server.energy))


@status_router.get("/dashboard", dependencies=[Depends(require_key_or_sign_in)])
async def dashboard():
    return HTMLResponse(dashboard_html(), headers={"Cache-Control": "no-cache"})


@status_router.get("/dashboard/data", dependencies=[Depends(require_key_or_sign_in)])
async def dashboard_data(server: Served, since: int = 0, defer_since: int = 0):
    return await asyncio.to_thread(dashboard_view, server, server.controller, since, defer_since)


# ---- OpenAI's API ---------------------------------------------------------------------------------------
@openai_router.get("/models")
async def models(server: Served):
    card = ModelCard(
        id=server.model_id,
        created=int(server.started_s),
        engine=server.engine_name,
        meter=server.meter.name,
        energy_source=server.meter.energy_source,
        variant=server.scheduler.variant,
        variants=server.variants() if server.adaptive else None,
    )
    return ModelList(data=[card])


@openai_router.post("/chat/completions")
async def chat(request: Request, server: Served):
    body = await _parse(request, ChatCompletionRequest)
    messages = check_chat(server, body)
    ids = await asyncio.to_thread(server.prompt_from_messages, messages)
    return await _answer(request, server, body, ids, CHAT)


@openai_router.post("/completions")
async def completions(request: Request, server: Served):
    body = await _parse(request, CompletionRequest)
    prompt = check_completion(server, body)
    if isinstance(prompt, str):
        ids = await asyncio.to_thread(server.prompt_from_text, prompt)
    else:
        ids = server.prompt_from_ids(list(prompt))
    return await _answer(request, server, body, ids, COMPLETION)


async def _answer(request: Request, server: Server, body, ids: list[int], kind: ChunkKind):
    """Generate for one chat or completion request: stream its chunks, or collect it into one response. A flex
    request first waits for the deferral's go (a cleaner slot, spare capacity, or its wait running out), then
    takes only slots the default tier leaves free."""
    params = sampling_of(server, body, ids)
    tier = "flex" if body.service_tier == "flex" else "default"
    if tier == "flex":
        await flex_wait(server.deferral, len(ids) + params.max_tokens, request)
    handle = server.submit(
        ids,
        params,
        loop=asyncio.get_running_loop(),
        tier=tier,
        preemptible=tier == "flex" and not body.stream,
    )
    rid, created = f"{kind.id_prefix}-{handle.request_id}", int(time.time())
    if body.stream:
        usage = bool(body.stream_options and body.stream_options.include_usage)
        chunks = completion_chunks(
            handle, rid, created, server.model_id, usage, server.replica, kind, service_tier=tier
        )
        return event_stream(chunks, request, handle.cancel)
    result = await collect(handle, request)
    if tier == "flex":
        server.deferral.flex_done(result.prompt_tokens + result.completion_tokens, result.carbon_g)
    return kind.response(
        id=rid,
        created=created,
        model=server.model_id,
        choices=[kind.choice(result)],
        usage=usage_of(result, server.replica),
        service_tier=tier,
    )


async def _parse(request: Request, model: type[BaseModel]):
    """The JSON body as `model`, whatever Content-Type the client sent (curl -d sends a form type)."""
    raw = await request.body()
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(f"the request body is not valid JSON ({exc})", code="invalid_json") from None
    if not isinstance(data, dict):
        raise RequestError("the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None
