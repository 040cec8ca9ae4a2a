"""The HTTP app: OpenAI's routes over a `Server`, thin. `create_app(server)` is all a front end needs
(uvicorn in `greenlm serve`, a Ray Serve deployment later).

    POST /v1/chat/completions   POST /v1/completions   GET /v1/models
    GET /health                 GET /metrics (Prometheus)   GET /energy (the energy account as JSON)
    GET /dashboard              GET /dashboard/data (what the dashboard draws, as JSON)

Errors use OpenAI's shape, {"error": {"message", "type", "param", "code"}}. With an API key every /v1 route
wants `Authorization: Bearer <key>`. Bodies over the size limit get 413 before any parsing.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import NamedTuple

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from greenlm.serve.dashboard import dashboard_html, dashboard_view
from greenlm.serve.errors import EngineFailed, QueueFull, RequestError, Unauthorized
from greenlm.serve.metrics import CONTENT_TYPE
from greenlm.serve.protocol import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    ChatMessageOut,
    Completion,
    CompletionChoice,
    CompletionRequest,
    ErrorResponse,
    ModelCard,
    ModelList,
    Usage,
)
from greenlm.serve.scheduler import FinishEvent, RequestHandle, RequestResult, TokenEvent
from greenlm.serve.server import Server

log = logging.getLogger(__name__)


def _error(
    status: int, message: str, type: str, param: str | None = None, code: str | None = None, headers=None
):
    return JSONResponse(ErrorResponse.of(message, type, param, code), status_code=status, headers=headers)


class BodyLimit:
    """ASGI middleware: a request body beyond `max_bytes` (declared or streamed) gets 413, unread."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        too_large = declared is not None and declared.isdigit() and int(declared) > self.max_bytes
        body, more = b"", not too_large
        while more:  # buffer the body (bounded) so a chunked upload cannot get past the limit either
            message = await receive()
            if message["type"] != "http.request":
                return await self.app(scope, _replay([message]), send)
            body += message.get("body", b"")
            more = message.get("more_body", False)
            too_large = len(body) > self.max_bytes
            if too_large:
                break
        if too_large:
            response = _error(
                413,
                f"request body is larger than this server's limit of {self.max_bytes} bytes",
                "invalid_request_error",
                code="request_too_large",
            )
            return await response(scope, receive, send)
        return await self.app(
            scope, _replay([{"type": "http.request", "body": body, "more_body": False}], receive), send
        )


def _replay(messages: list[dict], then=None):
    queue = list(messages)

    async def receive():
        if queue:
            return queue.pop(0)
        if then is not None:
            return await then()  # after the body: the client's disconnect, when it comes
        return {"type": "http.disconnect"}

    return receive


def _usage(result: RequestResult, replica: str | None = None) -> Usage:
    return Usage(**result.usage(), replica=replica)


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


def _sse(payload) -> str:
    body = payload.model_dump_json() if hasattr(payload, "model_dump_json") else json.dumps(payload)
    return f"data: {body}\n\n"


def create_app(server: Server, *, metrics=None, energy=None) -> FastAPI:
    """`metrics` and `energy` (async callables): what /metrics and /energy answer instead of this server's own
    (a Ray Serve replica answers for every replica)."""
    app = FastAPI(title="greenlm serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server
    key = server.config.api_key

    # ---- errors in OpenAI's shape ----------------------------------------------------------------------
    @app.exception_handler(RequestError)
    async def request_error(_request: Request, exc: RequestError):
        headers = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, QueueFull) else None
        return _error(exc.status, str(exc), exc.type, exc.param, exc.code, headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError):
        return _validation_error(exc.errors())

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return _error(exc.status_code, str(exc.detail), kind)

    @app.exception_handler(Exception)
    async def crashed(_request: Request, exc: Exception):
        log.exception("request failed")
        return _error(500, f"internal error: {type(exc).__name__}: {exc}", "server_error")

    async def authorized(request: Request) -> None:
        if key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise Unauthorized("missing or wrong API key: send the header 'Authorization: Bearer <key>'")

    # ---- routes ----------------------------------------------------------------------------------------
    @app.get("/health")
    async def health():
        if not server.healthy():
            return _error(503, "the serving loop has stopped", "server_error")
        return {"status": "ok", "model": server.model_id}

    @app.get("/metrics")
    async def metrics_route():
        body = await (metrics() if metrics else asyncio.to_thread(server.metrics.render))
        return Response(body, media_type=CONTENT_TYPE)

    @app.get("/energy")
    async def energy_route():
        return await (energy() if energy else asyncio.to_thread(server.energy))

    @app.get("/dashboard")
    async def dashboard():
        return HTMLResponse(dashboard_html(), headers={"Cache-Control": "no-cache"})

    @app.get("/dashboard/data")
    async def dashboard_data(since: int = 0):
        return await asyncio.to_thread(dashboard_view, server, since)

    @app.get("/v1/models", dependencies=[Depends(authorized)])
    async def models():
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

    async def answer(request: Request, body, ids: list[int], max_tokens, kind: _Kind):
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
            chunks = _chunks(handle, rid, created, server.model_id, usage, server.replica, kind)
            return _stream(handle, request, chunks)
        result = await _collect(handle, request)
        return kind.response(
            id=rid,
            created=created,
            model=server.model_id,
            choices=[kind.choice(result)],
            usage=_usage(result, server.replica),
        )

    @app.post("/v1/chat/completions", dependencies=[Depends(authorized)])
    async def chat(request: Request):
        body = await _parse(request, ChatCompletionRequest)
        server.check_model(body.model)
        _refuse(body.n != 1 and body.n is not None, "n", "only n=1 is supported: send one request per choice")
        _refuse(
            bool(body.logprobs) or body.top_logprobs is not None, "logprobs", "logprobs are not supported"
        )
        messages = [{"role": m.role, "content": _message_text(m.content)} for m in body.messages]
        ids = await asyncio.to_thread(server.prompt_from_messages, messages)
        return await answer(request, body, ids, body.max_completion_tokens or body.max_tokens, _CHAT)

    @app.post("/v1/completions", dependencies=[Depends(authorized)])
    async def completions(request: Request):
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
        return await answer(request, body, ids, body.max_tokens, _COMPLETION)

    return BodyLimit(app, server.config.max_body_bytes)


def _validation_error(errors) -> JSONResponse:
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = loc[0] if loc else None
    where = ".".join(loc) or "body"
    return _error(400, f"{where}: {first.get('msg', 'invalid value')}", "invalid_request_error", param)


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


def _refuse(condition: bool, param: str, message: str) -> None:
    if condition:
        raise RequestError(message, param=param)


def _failed(result: RequestResult) -> RequestError | None:
    """The error a request that did not complete answers with (None when it completed)."""
    if result.finish_reason == "error":
        return EngineFailed(f"generation failed: {result.error}", status=500, code="engine_error")
    if result.finish_reason == "abort":
        return EngineFailed(
            f"the request was not completed: {result.error or 'cancelled'}", status=503, code="aborted"
        )
    return None


async def _watch_disconnect(request: Request, handle: RequestHandle) -> None:
    """Cancel the request when its client goes away (the slot frees at the next step)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            handle.cancel()
            return


async def _collect(handle: RequestHandle, request: Request) -> RequestResult:
    watcher = asyncio.create_task(_watch_disconnect(request, handle))
    try:
        result = None
        async for event in handle:
            if isinstance(event, FinishEvent):
                result = event.result
    finally:
        watcher.cancel()
        handle.cancel()  # a no-op when it finished; frees the slot when this handler was cancelled
    error = _failed(result)
    if error is not None:
        raise error
    return result


def _stream(handle: RequestHandle, request: Request, chunks: AsyncIterator[str]) -> StreamingResponse:
    async def body():
        watcher = asyncio.create_task(_watch_disconnect(request, handle))
        try:
            async for chunk in chunks:
                yield chunk
            yield "data: [DONE]\n\n"
        finally:
            watcher.cancel()
            handle.cancel()

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _stream_error(result: RequestResult) -> str | None:
    error = _failed(result)
    if error is None:
        return None
    return _sse(ErrorResponse.of(str(error), error.type, code=error.code))


async def _chunks(handle, rid, created, model, include_usage, replica, kind: _Kind) -> AsyncIterator[str]:
    """The server-sent events of a streamed chat or text completion: each token's text, then the finish
    reason, then (when asked) the usage with its energy."""

    def chunk(choice) -> str:
        return _sse(kind.chunk(id=rid, created=created, model=model, choices=[choice]))

    if kind.opening is not None:
        yield chunk(kind.opening())
    async for event in handle:
        if isinstance(event, TokenEvent):
            if event.text:
                yield chunk(kind.stream_choice(event.text, None))
            continue
        result = event.result
        error = _stream_error(result)
        if error:
            yield error
            return
        yield chunk(kind.stream_choice(None, result.finish_reason))
        if include_usage:
            yield _sse(
                kind.chunk(id=rid, created=created, model=model, choices=[], usage=_usage(result, replica))
            )


class _Kind(NamedTuple):
    """What differs between a chat and a text completion: the id prefix, the response and its choice, the
    streamed chunk and its choice (text None: the closing one), and the chat's opening choice."""

    id_prefix: str
    response: type
    choice: Callable[[RequestResult], object]
    chunk: type
    stream_choice: Callable[[str | None, str | None], object]
    opening: Callable[[], object] | None = None


_CHAT = _Kind(
    "chatcmpl",
    ChatCompletion,
    lambda result: ChatChoice(
        message=ChatMessageOut(content=result.text), finish_reason=result.finish_reason
    ),
    ChatCompletionChunk,
    lambda text, finish: ChatChunkChoice(delta=ChatDelta(content=text), finish_reason=finish),
    lambda: ChatChunkChoice(delta=ChatDelta(role="assistant", content="")),
)
_COMPLETION = _Kind(
    "cmpl",
    Completion,
    lambda result: CompletionChoice(text=result.text, finish_reason=result.finish_reason),
    Completion,
    lambda text, finish: CompletionChoice(text=text or "", finish_reason=finish),
)
