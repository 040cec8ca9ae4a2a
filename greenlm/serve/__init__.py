"""greenlm serve: an OpenAI-compatible server with continuous batching and the energy of every request.

Server(ServeConfig(...))   the library object (submit requests, read the energy account)
create_app(server)         the FastAPI app over it (uvicorn, or a Ray Serve deployment)
"""

from greenlm._lazy import lazy

__getattr__, __dir__, __all__ = lazy(
    __name__,
    {
        "ServeConfig": "greenlm.serve.config",
        "Server": "greenlm.serve.server",
        "create_app": "greenlm.serve.app",
        "SamplingParams": "greenlm.serve.sampling",
        "RequestResult": "greenlm.serve.scheduler",
    },
)
