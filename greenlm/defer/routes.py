"""OpenAI's Files and Batches routes over a `Deferral` (which runs its work on any `RequestRunner`): an app
mounts `batch_router(...)` and keeps the deferral in `app.state.deferral`. Errors are answered here in
OpenAI's shape, so the router needs no handler from the app that mounts it.

    POST /v1/files (multipart: file, purpose=batch)   GET /v1/files   GET /v1/files/{id}
    GET /v1/files/{id}/content                        DELETE /v1/files/{id}
    POST /v1/batches   GET /v1/batches   GET /v1/batches/{id}   POST /v1/batches/{id}/cancel
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Sequence

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from greenlm.defer.errors import ApiError
from greenlm.defer.manager import Deferral
from greenlm.defer.objects import file_object


def _deferral(request: Request) -> Deferral:
    deferral = getattr(request.app.state, "deferral", None)
    if deferral is None:
        raise ApiError("this server runs no Batch API", code="not_supported")
    return deferral


def _answered(route):
    """An ApiError becomes OpenAI's error response."""

    @functools.wraps(route)
    async def wrapper(*args, **kwargs):
        try:
            return await route(*args, **kwargs)
        except ApiError as exc:
            return JSONResponse(exc.body(), status_code=exc.status)

    return wrapper


def _int(request: Request, name: str, default: int) -> int:
    text = request.query_params.get(name)
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise ApiError(f"{name} must be a whole number, got {text!r}", param=name) from None


def _page(items: list[dict], more: bool) -> dict:
    return {
        "object": "list",
        "data": items,
        "first_id": items[0]["id"] if items else None,
        "last_id": items[-1]["id"] if items else None,
        "has_more": more,
    }


def batch_router(dependencies: Sequence = ()) -> APIRouter:
    """The routes, each behind `dependencies` (e.g. the app's API-key check)."""
    router = APIRouter(prefix="/v1", dependencies=list(dependencies))

    @router.post("/files")
    @_answered
    async def create_file(request: Request):
        deferral = _deferral(request)
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise ApiError(
                "upload the file as multipart/form-data with fields 'file' and 'purpose'", param="file"
            )
        form = await request.form()
        upload, purpose = form.get("file"), form.get("purpose")
        if upload is None or isinstance(upload, str):
            raise ApiError("the form has no 'file' part: send the JSONL file as 'file'", param="file")
        if not isinstance(purpose, str) or not purpose:
            raise ApiError("the form has no 'purpose': send purpose=batch", param="purpose")
        content = await upload.read()
        return await asyncio.to_thread(
            deferral.create_file, upload.filename or "upload.jsonl", purpose, content
        )

    @router.get("/files")
    @_answered
    async def list_files(request: Request):
        deferral = _deferral(request)
        q = request.query_params
        records, more = await asyncio.to_thread(
            deferral.list_files, purpose=q.get("purpose"), after=q.get("after"), limit=_int(request, "limit", 10_000),
            order=q.get("order", "desc"),
        )  # fmt: skip
        return _page([file_object(r) for r in records], more)

    @router.get("/files/{file_id}")
    @_answered
    async def get_file(request: Request, file_id: str):
        return file_object(await asyncio.to_thread(_deferral(request).get_file, file_id))

    @router.get("/files/{file_id}/content")
    @_answered
    async def file_content(request: Request, file_id: str):
        content = await asyncio.to_thread(_deferral(request).file_content, file_id)
        return Response(content, media_type="application/jsonl")

    @router.delete("/files/{file_id}")
    @_answered
    async def delete_file(request: Request, file_id: str):
        return await asyncio.to_thread(_deferral(request).delete_file, file_id)

    @router.post("/batches")
    @_answered
    async def create_batch(request: Request):
        deferral = _deferral(request)
        try:
            body = json.loads(await request.body())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ApiError(f"the request body is not valid JSON ({exc})", code="invalid_json") from None
        if not isinstance(body, dict):
            raise ApiError("the request body must be a JSON object")
        for name in ("input_file_id", "endpoint", "completion_window"):
            if not isinstance(body.get(name), str) or not body[name]:
                raise ApiError(f"{name} is required (a string)", param=name)
        return await asyncio.to_thread(
            deferral.create_batch,
            body["input_file_id"],
            body["endpoint"],
            body["completion_window"],
            body.get("metadata"),
        )

    @router.get("/batches")
    @_answered
    async def list_batches(request: Request):
        deferral = _deferral(request)
        items, more = await asyncio.to_thread(
            deferral.list_batches, after=request.query_params.get("after"), limit=_int(request, "limit", 20)
        )
        return _page(items, more)

    @router.get("/batches/{batch_id}")
    @_answered
    async def get_batch(request: Request, batch_id: str):
        return await asyncio.to_thread(_deferral(request).batch, batch_id)

    @router.post("/batches/{batch_id}/cancel")
    @_answered
    async def cancel_batch(request: Request, batch_id: str):
        return await asyncio.to_thread(_deferral(request).cancel_batch, batch_id)

    return router
