"""What every greenlm HTTP app shares below its routes: errors in OpenAI's shape,
{"error": {"message", "type", "param", "code"}}, for every failure (a request's, a validation's, an unknown
route, a crash), a body-size limit that answers 413 before any parsing, and a body read as a JSON object."""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from greenlm.serve.errors import RequestError
from greenlm.serve.protocol import ErrorResponse

log = logging.getLogger(__name__)


def error_response(
    status: int, message: str, type: str, param: str | None = None, code: str | None = None, headers=None
) -> JSONResponse:
    return JSONResponse(ErrorResponse.of(message, type, param, code), status_code=status, headers=headers)


def json_object(raw: bytes) -> dict:
    """A request body as a JSON object, or the RequestError (400) saying what it is instead."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(f"the request body is not valid JSON ({exc})", code="invalid_json") from None
    if not isinstance(data, dict):
        raise RequestError("the request body must be a JSON object")
    return data


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestError, _request_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _crashed)


async def _request_error(_request: Request, exc: RequestError) -> JSONResponse:
    return error_response(exc.status, str(exc), exc.type, exc.param, exc.code, exc.headers)


async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
    return validation_error(exc.errors())


async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    return error_response(exc.status_code, str(exc.detail), kind)


async def _crashed(_request: Request, exc: Exception) -> JSONResponse:
    log.exception("request failed")
    return error_response(500, f"internal error: {type(exc).__name__}: {exc}", "server_error")


def validation_error(errors) -> JSONResponse:
    """The first of pydantic's errors as a 400 naming the field."""
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = loc[0] if loc else None
    where = ".".join(loc) or "body"
    return error_response(
        400, f"{where}: {first.get('msg', 'invalid value')}", "invalid_request_error", param
    )


class BodyLimit:
    """ASGI middleware: a request body beyond `max_bytes` (declared or streamed) gets 413, unread. `by_path`:
    other limits for some paths (a batch file upload)."""

    def __init__(self, app, max_bytes: int, by_path: dict[str, int] | None = None):
        self.app, self.max_bytes, self.by_path = app, max_bytes, dict(by_path or {})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        max_bytes = self.by_path.get(scope.get("path", ""), self.max_bytes)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        too_large = declared is not None and declared.isdigit() and int(declared) > max_bytes
        parts, size, more = [], 0, not too_large
        while more:  # buffer the body (bounded) so a chunked upload cannot get past the limit either
            message = await receive()
            if message["type"] != "http.request":
                return await self.app(scope, _replay([message]), send)
            parts.append(message.get("body", b""))
            size += len(parts[-1])
            more = message.get("more_body", False)
            too_large = size > max_bytes
            if too_large:
                break
        body = b"".join(parts)
        if too_large:
            response = error_response(
                413,
                f"request body is larger than this server's limit of {max_bytes} bytes",
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
