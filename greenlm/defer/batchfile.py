"""A Batch API input file checked line by line, as OpenAI's: JSONL, one request per line,

    {"custom_id": "request-1", "method": "POST", "url": "/v1/chat/completions", "body": {...}}

with a size and a line limit. Every refusal is a `BatchInputError` naming the line and what to do; nothing
is kept of a file that fails. Whether a body is a request the model can run is found when it runs: such a
line is answered in the batch's error file, as OpenAI does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from greenlm.defer.errors import BatchInputError

ENDPOINTS = ("/v1/chat/completions", "/v1/completions")
MAX_LINES = 50_000  # OpenAI's limit per batch
MAX_FILE_BYTES = 200 * 1024 * 1024  # OpenAI's limit per batch input file
MAX_CUSTOM_ID_CHARS = 512
SHAPE = '{"custom_id": "...", "method": "POST", "url": "/v1/chat/completions", "body": {...}}'


@dataclass(frozen=True)
class BatchLine:
    line: int  # 1-based, in the input file
    custom_id: str
    url: str
    body: dict


def unknown_endpoint(url: object) -> str:
    return f"unknown endpoint {url!r}: this server batches {' and '.join(ENDPOINTS)}"


def parse_batch_file(
    content: bytes, *, max_lines: int = MAX_LINES, max_bytes: int = MAX_FILE_BYTES
) -> list[BatchLine]:
    """Every request of a batch file, or the first thing wrong with it."""
    if len(content) > max_bytes:
        raise BatchInputError(
            f"the file is {len(content):,} bytes, over this server's limit of {max_bytes:,} bytes: split it into "
            "several batches",
            param="file",
            code="file_too_large",
        )
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        raise BatchInputError(
            "the file is not UTF-8 text: a batch file is JSONL, one request per line",
            param="file",
            code="invalid_file",
        ) from None
    lines: list[BatchLine] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        if len(lines) >= max_lines:
            raise BatchInputError(
                f"the file has more than {max_lines:,} requests, this server's limit per batch: split it",
                line=number,
                param="file",
                code="too_many_requests",
            )
        lines.append(_line(number, raw, seen))
    if not lines:
        raise BatchInputError(
            f"the file has no requests: write one JSON object per line, {SHAPE}",
            param="file",
            code="empty_file",
        )
    return lines


def _fail(number: int, message: str, code: str = "invalid_batch_line") -> BatchInputError:
    return BatchInputError(f"line {number}: {message}", line=number, param="file", code=code)


def _line(number: int, raw: str, seen: dict[str, int]) -> BatchLine:
    try:
        item = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise _fail(
            number, f"not valid JSON ({exc.msg}, column {exc.colno}): each line is one object {SHAPE}"
        ) from None
    if not isinstance(item, dict):
        raise _fail(number, f"expected a JSON object {SHAPE}, got {type(item).__name__}")
    custom_id = item.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id.strip():
        raise _fail(number, "custom_id must be a non-empty string (it pairs the request with its result)")
    if len(custom_id) > MAX_CUSTOM_ID_CHARS:
        raise _fail(number, f"custom_id is longer than {MAX_CUSTOM_ID_CHARS} characters")
    if custom_id in seen:
        raise _fail(
            number,
            f"custom_id {custom_id!r} repeats line {seen[custom_id]}: each request needs its own custom_id",
            "duplicate_custom_id",
        )
    seen[custom_id] = number
    method = item.get("method")
    if method != "POST":
        raise _fail(number, f'method must be "POST", got {method!r}')
    url = item.get("url")
    if url not in ENDPOINTS:
        raise _fail(number, unknown_endpoint(url), "unknown_endpoint")
    body = item.get("body")
    if not isinstance(body, dict):
        raise _fail(number, "body must be a JSON object: the request as it would be sent to the endpoint")
    if body.get("stream"):
        raise _fail(number, "body.stream must be false: a batch request's answer goes to the output file")
    return BatchLine(number, custom_id, url, body)
