"""What the Batch API refuses, with the HTTP status and OpenAI error fields each maps to. The routes answer
these themselves (any app that mounts them gets OpenAI's error shape without its own handlers)."""

from __future__ import annotations

from greenlm.errors import GreenlmError


class ApiError(GreenlmError):
    status = 400
    type = "invalid_request_error"

    def __init__(
        self, message: str, *, param: str | None = None, code: str | None = None, line: int | None = None
    ):
        super().__init__(message)
        self.param, self.code, self.line = param, code, line

    def body(self) -> dict:
        return {"error": {"message": str(self), "type": self.type, "param": self.param, "code": self.code}}


class BatchInputError(ApiError):
    """A batch file or request the server refuses (400). `line`: the 1-based line at fault."""


class NotFound(ApiError):
    status = 404

    def __init__(self, message: str, *, param: str | None = None):
        super().__init__(message, param=param)
