"""What a request can get wrong, or meet, with the HTTP status and OpenAI error fields each maps to."""

from __future__ import annotations

from greenlm.errors import GreenlmError


class RequestError(GreenlmError):
    """A request the server will not run. `param` names the offending field, as OpenAI's errors do."""

    status = 400
    type = "invalid_request_error"
    headers: dict[str, str] | None = None  # HTTP headers the answer carries

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param, self.code = param, code


class ModelNotFound(RequestError):
    status = 404

    def __init__(self, message: str):
        super().__init__(message, param="model", code="model_not_found")


class QueueFull(RequestError):
    """Every slot is busy and the queue is at --max-queue."""

    status = 429
    type = "rate_limit_error"

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message, code="queue_full")
        self.retry_after_s = retry_after_s
        self.headers = {"Retry-After": str(retry_after_s)}


class NotAccepting(RequestError):
    """The server is draining or stopped."""

    status = 503
    type = "server_error"

    def __init__(self, message: str):
        super().__init__(message, code="shutting_down")


class Unauthorized(RequestError):
    """No key, or the wrong one. `challenge`: a WWW-Authenticate value, so a browser asks for the key."""

    status = 401

    def __init__(self, message: str, *, challenge: str | None = None):
        super().__init__(message, code="invalid_api_key")
        if challenge is not None:
            self.headers = {"WWW-Authenticate": challenge}


class EngineFailed(RequestError):
    """The engine failed while the request ran (500), or the request was dropped unfinished (503)."""

    type = "server_error"

    def __init__(self, message: str, *, status: int, code: str):
        super().__init__(message, code=code)
        self.status = status
