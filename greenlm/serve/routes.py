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
from greenlm.serve.errors import RequestError
from greenlm.serve.middleware import json_object
from greenlm.serve.protocol import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList
from greenlm.serve.server import Server
from greenlm.serve.streaming import (
    CHAT,
    COMPLETION,
    ChunkKind,
    collect,
    completion_chunks,
    event_stream,
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
    server.check_model(body.model)
    _refuse(body.n != 1 and body.n is not None, "n", "only n=1 is supported: send one request per choice")
    _refuse(bool(body.logprobs) or body.top_logprobs is not None, "logprobs", "logprobs are not supported")
    messages = [{"role": m.role, "content": _message_text(m.content)} for m in body.messages]
    ids = await asyncio.to_thread(server.prompt_from_messages, messages)
    return await _answer(request, server, body, ids, body.max_completion_tokens or body.max_tokens, CHAT)


@openai_router.post("/completions")
async def completions(request: Request, server: Served):
    body = await _parse(request, CompletionRequest)
    server.check_model(body.model)
    _refuse(body.n != 1 and body.n is not None, "n", "only n=1 is supported: send one request per choice")
    _refuse(bool(body.logprobs), "logprobs", "logprobs are not supported")
    _refuse(body.echo, "echo", "echo is not supported")
    _refuse(body.suffix is not None, "suffix", "suffix (insertion) is not supported")
    prompt = body.prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
        _refuse(len(prompt) != 1, "prompt", "send one prompt per request")
        prompt = prompt[0]
    if isinstance(prompt, str):
        ids = await asyncio.to_thread(server.prompt_from_text, prompt)
    else:
        ids = server.prompt_from_ids(list(prompt))
    return await _answer(request, server, body, ids, body.max_tokens, COMPLETION)


async def _answer(request: Request, server: Server, body, ids: list[int], max_tokens, kind: ChunkKind):
    """Generate for one chat or completion request: stream its chunks, or collect it into one response."""
    params = server.sampling(
        prompt_tokens=len(ids),
        max_tokens=max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        seed=body.seed,
        stop=body.stop,
        ignore_eos=body.ignore_eos,
    )
    handle = server.submit(ids, params, loop=asyncio.get_running_loop())
    rid, created = f"{kind.id_prefix}-{handle.request_id}", int(time.time())
    if body.stream:
        usage = bool(body.stream_options and body.stream_options.include_usage)
        chunks = completion_chunks(handle, rid, created, server.model_id, usage, server.replica, kind)
        return event_stream(chunks, request, handle.cancel)
    result = await collect(handle, request)
    return kind.response(
        id=rid,
        created=created,
        model=server.model_id,
        choices=[kind.choice(result)],
        usage=usage_of(result, server.replica),
    )


async def _parse(request: Request, model: type[BaseModel]):
    """The JSON body as `model`, whatever Content-Type the client sent (curl -d sends a form type)."""
    data = json_object(await request.body())
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None


def _refuse(condition: bool, param: str, message: str) -> None:
    if condition:
        raise RequestError(message, param=param)


def _message_text(content) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for part in content:
        if part.type != "text" or part.text is None:
            raise RequestError(
                f"message content of type '{part.type}' is not supported: send text", param="messages"
            )
        texts.append(part.text)
    return "".join(texts)
