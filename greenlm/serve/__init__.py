"""greenlm serve: an OpenAI-compatible server with continuous batching and the energy of every request.

Server(ServeConfig(...))   the library object (submit requests, read the energy account)
create_app(server)         the FastAPI app over it (uvicorn, or a Ray Serve deployment)
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ServeConfig": "greenlm.serve.config",
    "Server": "greenlm.serve.server",
    "create_app": "greenlm.serve.app",
    "SamplingParams": "greenlm.serve.sampling",
    "RequestResult": "greenlm.serve.scheduler",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
