"""The HTTP routes over the library object (`Server`), which the app keeps in `app.state.server`.

    openai_router   POST /v1/chat/completions, POST /v1/completions, GET /v1/models (the API key)

/health, /metrics, /energy and the dashboard are the routes serve shares with the gateway (`status`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from greenlm.serve.auth import require_key
from greenlm.serve.middleware import json_object
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

openai_router = APIRouter(prefix="/v1", dependencies=[Depends(require_key)])


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
    data = json_object(await request.body())
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None
