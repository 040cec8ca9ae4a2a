"""OpenAI's response shapes for a chat or a text completion, streamed as server-sent events or collected
into one response, with the client's disconnect cancelling the work.

Reusable by any front end that frames chunks: `event_stream` sends chunks then `data: [DONE]` and calls
`cancel` when the client goes away, `CHAT` / `COMPLETION` build each kind's chunks and choices, and
`text_chunk_framer` frames a streamed text delta without pydantic per token. The framing of one event (`sse`,
`SSE_DONE`, `watch_disconnect`) is in `sse`, light enough for the gateway, which re-frames an upstream's events.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import NamedTuple

from fastapi import Request
from fastapi.responses import StreamingResponse

from greenlm.serve.errors import EngineFailed, RequestError
from greenlm.serve.protocol import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatDelta,
    ChatMessageOut,
    Completion,
    CompletionChoice,
    ErrorResponse,
    Usage,
)
from greenlm.serve.scheduler import FinishEvent, RequestHandle, RequestResult, TokenEvent
from greenlm.serve.sse import SSE_DONE, sse, watch_disconnect


class ChunkKind(NamedTuple):
    """What differs between a chat and a text completion: the id prefix, the response and its choice, the
    streamed chunk and its choice (text None: the closing one), and the chat's opening choice."""

    id_prefix: str
    response: type
    choice: Callable[[RequestResult], object]
    chunk: type
    stream_choice: Callable[[str | None, str | None], object]
    opening: Callable[[], object] | None = None


CHAT = ChunkKind(
    "chatcmpl",
    ChatCompletion,
    lambda result: ChatChoice(
        message=ChatMessageOut(content=result.text), finish_reason=result.finish_reason
    ),
    ChatCompletionChunk,
    lambda text, finish: ChatChunkChoice(delta=ChatDelta(content=text), finish_reason=finish),
    lambda: ChatChunkChoice(delta=ChatDelta(role="assistant", content="")),
)
COMPLETION = ChunkKind(
    "cmpl",
    Completion,
    lambda result: CompletionChoice(text=result.text, finish_reason=result.finish_reason),
    Completion,
    lambda text, finish: CompletionChoice(text=text or "", finish_reason=finish),
)


_SLOT = "\u0000greenlm-text\u0000"  # no generated text holds NUL: a safe placeholder to split at


def text_chunk_framer(
    kind: ChunkKind, rid: str, created: int, model: str, service_tier: str | None = None
) -> Callable[[str], str]:
    """The event of one streamed text delta, framed without pydantic per token: the chunk is serialized
    once with a placeholder, and each token's text is JSON-escaped into it (the same bytes `sse` gives for
    the same chunk; a test checks this over awkward strings)."""
    fields = dict(id=rid, created=created, model=model, service_tier=service_tier)
    framed = sse(kind.chunk(**fields, choices=[kind.stream_choice(_SLOT, None)]))
    before, marker, after = framed.partition(json.dumps(_SLOT))
    if not marker:  # the serializer wrote the placeholder another way: frame each chunk in full
        return lambda text: sse(kind.chunk(**fields, choices=[kind.stream_choice(text, None)]))
    return lambda text: before + json.dumps(text, ensure_ascii=False) + after


def usage_of(result: RequestResult, replica: str | None = None) -> Usage:
    return Usage(**result.usage(), replica=replica)


def failed(result: RequestResult) -> RequestError | None:
    """The error a request that did not complete answers with (None when it completed)."""
    if result.finish_reason == "error":
        return EngineFailed(f"generation failed: {result.error}", status=500, code="engine_error")
    if result.finish_reason == "abort":
        return EngineFailed(
            f"the request was not completed: {result.error or 'cancelled'}", status=503, code="aborted"
        )
    return None


async def flex_wait(deferral, tokens: int, request: Request) -> dict:
    """Wait for the deferral's go for a flex request of at most `tokens` (how long it waited, and why it runs
    now); a client that goes away meanwhile withdraws it."""
    gate = asyncio.wrap_future(deferral.flex(tokens))
    gone = asyncio.Event()

    def withdraw() -> None:
        gone.set()
        gate.cancel()

    watcher = asyncio.create_task(watch_disconnect(request, withdraw))
    try:
        return await gate
    except asyncio.CancelledError:
        if gone.is_set():  # the client left, not this handler being cancelled
            raise EngineFailed(
                "the client went away while its flex request waited", status=503, code="aborted"
            ) from None
        raise
    finally:
        watcher.cancel()


async def collect(handle: RequestHandle, request: Request) -> RequestResult:
    """The request's result once it finished; its error (a RequestError) when it did not complete."""
    watcher = asyncio.create_task(watch_disconnect(request, handle.cancel))
    try:
        result = None
        async for event in handle:
            if isinstance(event, FinishEvent):
                result = event.result
    finally:
        watcher.cancel()
        handle.cancel()  # a no-op when it finished; frees the slot when this handler was cancelled
    error = failed(result)
    if error is not None:
        raise error
    return result


def event_stream(
    chunks: AsyncIterator[str], request: Request, cancel: Callable[[], None]
) -> StreamingResponse:
    """`chunks` (framed events) then `data: [DONE]`; `cancel` when the client goes away or the stream ends."""

    async def body():
        watcher = asyncio.create_task(watch_disconnect(request, cancel))
        try:
            async for chunk in chunks:
                yield chunk
            yield SSE_DONE
        finally:
            watcher.cancel()
            cancel()

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def completion_chunks(
    handle: RequestHandle,
    rid: str,
    created: int,
    model: str,
    include_usage: bool,
    replica: str | None,
    kind: ChunkKind,
    *,
    service_tier: str | None = None,
) -> AsyncIterator[str]:
    """The server-sent events of a streamed chat or text completion: each token's text, then the finish
    reason, then (when asked) the usage with its energy; an error event instead when it did not complete."""

    def chunk(choice) -> str:
        return sse(
            kind.chunk(id=rid, created=created, model=model, choices=[choice], service_tier=service_tier)
        )

    text_chunk = text_chunk_framer(kind, rid, created, model, service_tier)
    if kind.opening is not None:
        yield chunk(kind.opening())
    async for event in handle:
        if isinstance(event, TokenEvent):
            if event.text:
                yield text_chunk(event.text)
            continue
        result = event.result
        error = failed(result)
        if error is not None:
            yield sse(ErrorResponse.of(str(error), error.type, code=error.code))
            return
        yield chunk(kind.stream_choice(None, result.finish_reason))
        if include_usage:
            yield sse(
                kind.chunk(
                    id=rid, created=created, model=model, choices=[], usage=usage_of(result, replica),
                    service_tier=service_tier,
                )
            )  # fmt: skip
