"""A chat or text completion relayed to an upstream, with the energy of its share of the upstream's meter
added to its usage.

* The request goes to the upstream the routing chose; until the client has received its first byte, a failure
  (refused, timed out, closed, a 5xx or 429 answer) moves it to the next upstream that is up. After the first
  byte, a failure ends the stream with an error event in OpenAI's shape, then `data: [DONE]`.
* A stream is relayed event by event as it arrives. The gateway asks the upstream for usage
  (`stream_options.include_usage`) whatever the client asked, and removes it when the client did not ask.
  Each event carrying output is noted (its arrival time) for the energy split.
* A non-streaming answer is relayed whole (the upstream sends nothing before it is done).
* At the end, the request's energy comes from its meter group (`MeterGroup.settle`) and goes into the usage,
  with token counts the upstream reported, else counted by `--tokenizer`, else estimated (said in the usage).

Time-outs: connect (`connect_timeout_s`), the first chunk of a stream or a whole non-streaming answer
(`first_byte_timeout_s`), and between two chunks of a stream (`idle_timeout_s`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass, field

import httpx
from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from greenlm.gateway import events
from greenlm.gateway.ledger import Charge
from greenlm.gateway.tokens import (
    FROM_CHARACTERS,
    FROM_CHUNKS,
    FROM_TOKENIZER,
    by_characters,
    prompt_chars,
    prompt_ids_count,
)
from greenlm.gateway.upstream import Upstream
from greenlm.gateway.usage import Counts, cached_tokens, gateway_usage
from greenlm.serve.errors import ModelNotFound, NotAccepting, RequestError
from greenlm.serve.middleware import error_response, json_object
from greenlm.serve.protocol import ErrorResponse
from greenlm.serve.sse import SSE_DONE, sse, watch_disconnect

log = logging.getLogger(__name__)

RETRY_STATUSES = {429, 500, 502, 503, 504}


class _Failed(Exception):
    """An attempt that failed before the client's first byte: try the next upstream."""

    def __init__(
        self, reason: str, code: str, *, down: bool, response: httpx.Response | None = None, body: bytes = b""
    ):
        super().__init__(reason)
        self.reason, self.code, self.down, self.response, self.body = reason, code, down, response, body


@dataclass
class Attempt:
    """One try of a request on one upstream, as the energy account sees it."""

    upstream: Upstream
    id: str
    start_s: float
    ended: bool = False
    booked: bool = False  # charged, or handed over to be charged once its window closes
    content_chunks: int = 0
    text: list[str] = field(default_factory=list)
    first_s: float | None = None
    last_s: float | None = None


class Relay:
    def __init__(self, gateway):
        self.g = gateway
        self._clients: dict[int, httpx.AsyncClient] = {}

    def client(self) -> httpx.AsyncClient:
        """The HTTP client of the running event loop (uvicorn's), made on first use."""
        loop = asyncio.get_running_loop()
        client = self._clients.get(id(loop))
        if client is None:
            c = self.g.config
            client = httpx.AsyncClient(
                timeout=httpx.Timeout(connect=c.connect_timeout_s, read=None, write=30.0, pool=None),
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=256),
            )
            self._clients[id(loop)] = client
        return client

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()

    # ---- one request -------------------------------------------------------------------------------------
    async def handle(self, request: Request, path: str) -> Response:
        g = self.g
        if not g.accepting:
            raise NotAccepting("the gateway is shutting down: send the request elsewhere or later")
        body = await _json_body(request)
        model = body.get("model")
        if model != g.model_id:
            raise ModelNotFound(f"model '{model}' is not served here: this gateway serves '{g.model_id}'")
        streaming = body.get("stream") is True
        options = body.get("stream_options") if isinstance(body.get("stream_options"), dict) else {}
        wants_usage = streaming and bool(options.get("include_usage"))
        rid = str(uuid.uuid4())  # a UUID: some servers (llama-cpp-python's) refuse any other X-Request-Id
        arrived = time.perf_counter()
        chars = prompt_chars(body)
        counter = g.tokens
        known_prompt = prompt_ids_count(body)
        if known_prompt is None and counter is not None:
            known_prompt = await asyncio.to_thread(counter.prompt_tokens, body)
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        g.load.start(rid, "", max_tokens if isinstance(max_tokens, int) else None)
        failures: list[_Failed] = []
        try:
            for upstream in g.route():
                g.load.moved(rid, upstream.name)
                out = dict(body)
                if upstream.model_id:
                    out["model"] = upstream.model_id
                if streaming:
                    out["stream_options"] = {**options, "include_usage": True}
                attempt = await self._begin(upstream, rid, streaming, chars, known_prompt)
                args = (request, attempt, path, out, arrived, known_prompt, chars, rid)
                try:
                    if streaming:
                        return await self._stream(*args, wants_usage)  # the stream finishes the load record
                    response = await self._whole(*args)
                except _Failed as failure:
                    self._abandon(attempt, failure)
                    failures.append(failure)
                    g.metrics.retries.labels(g.model_id, upstream.name, failure.code).inc()
                    continue
                except _Answered as answered:
                    g.load.finish(rid)
                    return answered.response
                g.load.finish(rid)
                return response
        except BaseException:
            g.load.finish(rid)
            raise
        g.load.finish(rid)
        return _no_upstream(failures)

    async def _begin(
        self, upstream: Upstream, rid: str, streaming: bool, chars: int, known_prompt: int | None
    ) -> Attempt:
        attempt = Attempt(upstream, f"{rid}/{upstream.index}", time.perf_counter())
        upstream.in_flight += 1
        upstream.requests += 1
        await upstream.group.begin(
            attempt.id, attempt.start_s, streaming=streaming, prompt_chars=chars, prompt_tokens=known_prompt
        )
        return attempt

    def _end(self, attempt: Attempt, prompt_tokens: int, completion_tokens: int, cached: int = 0) -> None:
        if attempt.ended:
            return
        attempt.ended = True
        attempt.upstream.in_flight -= 1
        attempt.upstream.group.ledger.end(
            attempt.id,
            attempt.last_s or time.perf_counter(),
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            content_chunks=attempt.content_chunks,
            cached_tokens=cached,
        )

    def _book(self, attempt: Attempt) -> None:
        """Charge an ended attempt whenever its window closes; nobody waits for the figure."""
        if not attempt.booked:
            attempt.booked = True
            attempt.upstream.group.charge_later(attempt.id)

    async def _settle(self, attempt: Attempt) -> Charge | None:
        """The energy of an ended attempt, for its usage (None: the meter did not answer in time)."""
        try:
            charge = await attempt.upstream.group.settle(attempt.id)
        except BaseException:  # cancelled while waiting for the window: booked all the same
            self._book(attempt)
            raise
        attempt.booked = True
        return charge

    def _abandon(self, attempt: Attempt, failure: _Failed) -> None:
        """An attempt that produced nothing for the client: booked (it may have cost the upstream something)."""
        attempt.upstream.failures += 1
        if failure.down:
            attempt.upstream.mark(False, failure.reason)
        log.warning(
            "upstream %s failed before the first byte (%s): %s",
            attempt.upstream.name,
            failure.code,
            failure.reason,
        )
        self._end(attempt, 0, 0)
        self._book(attempt)

    async def _open(self, attempt: Attempt, path: str, body: dict, rid: str) -> httpx.Response:
        """The upstream's response headers, within the first-byte time-out; a failure raises _Failed."""
        u = attempt.upstream
        headers = {"Content-Type": "application/json", "X-Request-Id": rid, **u.headers()}
        req = self.client().build_request(
            "POST", u.url + path, content=json.dumps(body).encode(), headers=headers
        )
        timeout = self.g.config.first_byte_timeout_s
        try:
            response = await asyncio.wait_for(self.client().send(req, stream=True), timeout)
        except TimeoutError:
            raise _Failed(f"no answer within {timeout:g} s", "first_byte_timeout", down=True) from None
        except httpx.ConnectError as exc:
            raise _Failed(f"cannot connect ({exc or 'refused'})", "connect", down=True) from None
        except httpx.TimeoutException as exc:
            raise _Failed(
                f"connecting timed out ({type(exc).__name__})", "connect_timeout", down=True
            ) from None
        except httpx.HTTPError as exc:
            raise _Failed(f"{type(exc).__name__}: {exc}", "closed", down=True) from None
        if response.status_code != 200:
            try:
                content = await asyncio.wait_for(response.aread(), timeout)
            except (TimeoutError, httpx.HTTPError):
                content = b""
            await response.aclose()
            if response.status_code in RETRY_STATUSES:
                raise _Failed(
                    f"HTTP {response.status_code}: {_message(content)}",
                    f"http_{response.status_code}",
                    down=False,
                    response=response,
                    body=content,
                )
            # the request's own fault (400, 404, ...): the client gets the upstream's answer as it is
            self._end(attempt, 0, 0)
            self._book(attempt)
            raise _Answered(_passthrough(response, content))
        return response

    # ---- a non-streaming answer --------------------------------------------------------------------------
    async def _whole(self, request, attempt, path, body, arrived, known_prompt, chars, rid) -> Response:
        g = self.g

        async def exchange() -> dict:
            response = await self._open(attempt, path, body, rid)
            left = g.config.first_byte_timeout_s - (time.perf_counter() - attempt.start_s)
            try:
                content = await asyncio.wait_for(response.aread(), max(0.001, left))
            except TimeoutError:
                raise _Failed(
                    "the answer did not come whole in time", "first_byte_timeout", down=True
                ) from None
            except httpx.HTTPError as exc:
                raise _Failed(f"the answer broke off ({type(exc).__name__})", "closed", down=True) from None
            finally:
                await response.aclose()
            attempt.last_s = time.perf_counter()
            try:
                data = json.loads(content)
            except ValueError:
                data = None
            if not isinstance(data, dict):
                raise _Failed("the answer is not a JSON object", "bad_answer", down=False)
            return data

        task = asyncio.ensure_future(exchange())
        watcher = asyncio.ensure_future(watch_disconnect(request, task.cancel))
        try:
            data = await task
        except asyncio.CancelledError:  # the client went away: the upstream's work is booked all the same
            self._end(attempt, known_prompt or 0, 0)
            self._book(attempt)
            g.metrics.finished(attempt.upstream.name, "abort")
            raise
        finally:
            watcher.cancel()
        texts = [_choice_text(c) for c in data.get("choices") or [] if isinstance(c, dict)]
        counts = self._counts(data.get("usage"), known_prompt, chars, "".join(texts), None)
        self._end(attempt, counts.prompt_tokens, counts.completion_tokens, counts.cached_tokens)
        charge = await self._settle(attempt)
        data["usage"] = self._usage(attempt, data.get("usage"), counts, charge)
        self._observe(attempt, arrived, counts, charge, _finish_reason(data))
        return JSONResponse(data)

    # ---- a stream ----------------------------------------------------------------------------------------
    async def _stream(
        self, request, attempt, path, body, arrived, known_prompt, chars, rid, wants_usage
    ) -> Response:
        response = await self._open(attempt, path, body, rid)
        splitter = events.EventSplitter()
        chunks = response.aiter_raw()
        timeout = self.g.config.first_byte_timeout_s
        first: list[events.Event] = []
        try:
            while not first:
                left = timeout - (time.perf_counter() - attempt.start_s)
                data = await asyncio.wait_for(chunks.__anext__(), max(0.001, left))
                first = [events.parse(e) for e in splitter.feed(data)]
        except (TimeoutError, StopAsyncIteration, httpx.HTTPError) as exc:
            await response.aclose()
            if isinstance(exc, TimeoutError):
                raise _Failed(f"no event within {timeout:g} s", "first_byte_timeout", down=True) from None
            raise _Failed(
                f"the stream ended before its first event ({type(exc).__name__})", "closed", down=True
            ) from None
        stream = _Stream(
            self, attempt, response, chunks, splitter, first, arrived, wants_usage, known_prompt, chars, rid
        )
        return _StreamResponse(stream, request)

    # ---- counts, usage, metrics --------------------------------------------------------------------------
    def _counts(self, usage, known_prompt, chars, text: str, chunks: int | None) -> Counts:
        """The token counts: the upstream's usage, else the tokenizer's, else estimated."""
        if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
            prompt = usage.get("prompt_tokens")
            prompt = prompt if isinstance(prompt, int) else (known_prompt or 0)
            return Counts(prompt, usage["completion_tokens"], cached_tokens=min(prompt, cached_tokens(usage)))
        counter = self.g.tokens
        if counter is not None:
            prompt = known_prompt if known_prompt is not None else by_characters(chars)
            return Counts(prompt, counter.count(text), FROM_TOKENIZER)
        prompt = known_prompt if known_prompt is not None else by_characters(chars)
        if chunks is not None:
            return Counts(prompt, chunks, FROM_CHUNKS)
        return Counts(prompt, by_characters(len(text)), FROM_CHARACTERS)

    def _usage(self, attempt: Attempt, upstream_usage, counts: Counts, charge: Charge | None) -> dict:
        group = attempt.upstream.group
        note = None
        if charge is None:
            why = group.failing or f"no window closed within {group.settle_timeout_s:g} s"
            note = f"the meter did not answer in time ({why}): this request is booked when it does"
        return gateway_usage(
            upstream_usage if isinstance(upstream_usage, dict) else None,
            counts,
            charge,
            meter=group.meter.name,
            energy_source=group.meter.energy_source,
            upstream=attempt.upstream.name,
            energy_note=note,
        )

    def _observe(
        self, attempt: Attempt, arrived: float, counts: Counts, charge: Charge | None, reason: str
    ) -> None:
        m, name = self.g.metrics, attempt.upstream.name
        labels = (m.model_name, name)
        m.requests.prompt_tokens.labels(*labels).inc(counts.prompt_tokens)
        m.requests.generation_tokens.labels(*labels).inc(counts.completion_tokens)
        m.requests.e2e.labels(*labels).observe((attempt.last_s or time.perf_counter()) - arrived)
        if charge is not None:
            m.requests.energy.labels(*labels).observe(charge.energy_j)
        m.finished(name, reason)
        self.g.finished(name, reason, counts.completion_tokens, charge.energy_j if charge else None)


class _StreamResponse(StreamingResponse):
    """A relayed stream whose upstream side is released however the response ends."""

    def __init__(self, stream: _Stream, request: Request):
        super().__init__(
            stream.body(request),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Request-Id": stream.rid},
        )
        self.stream = stream

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.stream.cleanup()


class _Answered(Exception):
    """The upstream answered the request with its own error: relay it, no retry."""

    def __init__(self, response: Response):
        super().__init__("answered")
        self.response = response


class _Stream:
    """The body of a relayed stream: the events already read, then the rest as they arrive."""

    def __init__(
        self,
        relay: Relay,
        attempt,
        response,
        chunks,
        splitter,
        first,
        arrived,
        wants_usage,
        known_prompt,
        chars,
        rid,
    ):
        self.relay, self.attempt, self.response, self.chunks = relay, attempt, response, chunks
        self.splitter, self.first, self.arrived, self.wants_usage = splitter, first, arrived, wants_usage
        self.known_prompt, self.chars, self.rid = known_prompt, chars, rid
        self.usage: dict | None = None
        self.last: dict | None = None  # the last chunk object (its id, created, model and object name)
        self.reason = "stop"
        self.failed: str | None = None
        self.done = False
        self.gone = False  # the client went away
        self.cleaned = False
        self._prev_s = 0.0

    def _see(self, event: events.Event, now: float) -> bytes | str | None:
        """What to send the client for one upstream event (None: hold or drop it); notes output and usage."""
        a, g = self.attempt, self.relay.g
        if event.done:
            self.done = True
            return None
        if event.error is not None:
            self.failed = str(event.error.get("message") or "the upstream reported an error")
            return event.raw
        if event.obj is None:
            return event.raw  # a comment or a ping: keeps the connection alive
        self.last = event.obj
        text = event.output_text()
        if text is not None:
            a.last_s = now
            if a.first_s is None:
                a.first_s = now
                g.metrics.requests.ttft.labels(g.model_id, a.upstream.name).observe(now - self.arrived)
                g.load.first_token(now - self.arrived)
            else:
                g.metrics.requests.itl.labels(g.model_id, a.upstream.name).observe(now - self._prev_s)
            self._prev_s = now
            a.content_chunks += 1
            a.text.append(text)
            a.upstream.group.ledger.output_chunk(a.id, now)
            g.load.token(self.rid)
        for choice in event.choices:
            if isinstance(choice, dict) and choice.get("finish_reason"):
                self.reason = str(choice["finish_reason"])
        if event.usage is not None:
            self.usage = event.usage
            a.last_s = now
            if not event.choices:
                return None  # the usage chunk: sent with the energy at the end, if the client asked
            return event.without_usage()
        return event.raw

    def _client_gone(self) -> None:
        self.gone = True
        asyncio.ensure_future(self.response.aclose())  # the upstream sees the disconnect and stops

    async def body(self, request: Request):
        a, relay, g = self.attempt, self.relay, self.relay.g
        watcher = asyncio.ensure_future(watch_disconnect(request, self._client_gone))
        self._prev_s = time.perf_counter()
        finished = False
        try:
            now = time.perf_counter()
            for event in self.first:
                out = self._see(event, now)
                if out is not None:
                    yield out
            while not self.done:
                try:
                    data = await asyncio.wait_for(self.chunks.__anext__(), g.config.idle_timeout_s)
                except StopAsyncIteration:
                    rest = self.splitter.rest()
                    if rest.strip():
                        out = self._see(events.parse(rest), time.perf_counter())
                        if out is not None:
                            yield out
                    break
                now = time.perf_counter()
                for raw in self.splitter.feed(data):
                    out = self._see(events.parse(raw), now)
                    if out is not None:
                        yield out
            if self.failed is None and not self.done and self.last is None:
                self.failed = "the upstream closed the stream before any output"
            if self.failed is not None:
                yield SSE_DONE
                await self._close("error")
                finished = True
                return
            counts = relay._counts(
                self.usage, self.known_prompt, self.chars, "".join(a.text), a.content_chunks
            )
            relay._end(a, counts.prompt_tokens, counts.completion_tokens, counts.cached_tokens)
            if self.wants_usage:
                charge = await relay._settle(a)
                usage = relay._usage(a, self.usage, counts, charge)
                last = self.last or {}
                yield sse(
                    {
                        "id": last.get("id", f"gw-{self.rid}"),
                        "object": last.get("object", "chat.completion.chunk"),
                        "created": last.get("created", int(time.time())),
                        "model": last.get("model", g.model_id),
                        "choices": [],
                        "usage": usage,
                    }
                )
                relay._observe(a, self.arrived, counts, charge, self.reason)
            else:
                relay._book(a)
                relay._observe(a, self.arrived, counts, None, self.reason)
            yield SSE_DONE
            finished = True
        except (TimeoutError, httpx.HTTPError, httpx.StreamError) as exc:
            if self.gone:
                return  # the client went away: booked as an abort below
            if isinstance(exc, TimeoutError):
                why = f"no event for {g.config.idle_timeout_s:g} s"
            else:
                why = f"the connection broke ({type(exc).__name__}: {exc})"
            a.upstream.failures += 1
            a.upstream.mark(False, f"a stream failed: {why}")  # a health check puts it back
            log.warning("upstream %s failed mid-stream: %s", a.upstream.name, why)
            message = f"upstream {a.upstream.name} failed after {a.content_chunks} output chunks: {why}"
            yield sse(ErrorResponse.of(message, "server_error", code="upstream_failed"))
            yield SSE_DONE
            await self._close("error")
            finished = True
        finally:
            watcher.cancel()
            if not finished:  # the client went away (or the gateway is stopping)
                await self._close("abort")
            await self.cleanup()

    async def cleanup(self) -> None:
        """Release the upstream's response and the load record (idempotent: also called when the body never
        ran, a client gone before the response started)."""
        if self.cleaned:
            return
        self.cleaned = True
        if not self.attempt.ended:
            await self._close("abort")
        self.relay._book(self.attempt)
        await self.response.aclose()
        self.relay.g.load.finish(self.rid)

    async def _close(self, reason: str) -> None:
        """A stream that did not end normally: booked with what was seen."""
        a, relay = self.attempt, self.relay
        if a.ended:
            return
        counts = relay._counts(self.usage, self.known_prompt, self.chars, "".join(a.text), a.content_chunks)
        relay._end(a, counts.prompt_tokens, counts.completion_tokens, counts.cached_tokens)
        relay._book(a)
        relay.g.metrics.finished(a.upstream.name, reason)


async def _json_body(request: Request) -> dict:
    data = json_object(await request.body())
    if not isinstance(data.get("model"), str):
        raise RequestError("model: a string is required (the model id /v1/models lists)", param="model")
    return data


def _message(content: bytes) -> str:
    try:
        data = json.loads(content)
    except ValueError:
        return content[:200].decode("utf-8", "replace") or "(no body)"
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        return str(error.get("message"))
    if isinstance(error, str):
        return error
    if isinstance(data, dict) and "detail" in data:
        return str(data["detail"])
    return content[:200].decode("utf-8", "replace")


def _passthrough(response: httpx.Response, content: bytes) -> Response:
    """The upstream's error as the client gets it: its body when it has OpenAI's shape, else wrapped in it."""
    try:
        data = json.loads(content)
    except ValueError:
        data = None
    headers = {k: v for k, v in response.headers.items() if k.lower() == "retry-after"}
    if isinstance(data, dict) and isinstance(data.get("error"), dict) and "message" in data["error"]:
        return JSONResponse(data, status_code=response.status_code, headers=headers)
    kind = "invalid_request_error" if response.status_code < 500 else "server_error"
    message = f"the upstream answered HTTP {response.status_code}: {_message(content)}"
    return error_response(response.status_code, message, kind, headers=headers)


def _no_upstream(failures: list[_Failed]) -> Response:
    if not failures:
        return error_response(503, "no upstream is configured", "server_error", code="no_upstream")
    last_answer = next((f for f in reversed(failures) if f.response is not None), None)
    if last_answer is not None and len(failures) == 1:
        return _passthrough(last_answer.response, last_answer.body)
    reasons = "; ".join(f"{f.reason}" for f in failures)
    status = 504 if all("timeout" in f.code for f in failures) else 502
    if last_answer is not None and all(f.response is not None for f in failures):
        status = last_answer.response.status_code
    return error_response(
        status,
        f"no upstream could answer ({len(failures)} tried): {reasons}",
        "server_error",
        code="upstream_unavailable",
    )


def _choice_text(choice: dict) -> str:
    message = choice.get("message")
    if isinstance(message, dict):
        return str(message.get("content") or "") + str(message.get("reasoning_content") or "")
    return str(choice.get("text") or "")


def _finish_reason(data: dict) -> str:
    for choice in data.get("choices") or []:
        if isinstance(choice, dict) and choice.get("finish_reason"):
            return str(choice["finish_reason"])
    return "stop"
