"""greenlm serve: an OpenAI-compatible server with continuous batching and the energy of every request.

Server(ServeConfig(...))   the library object (submit requests, read the energy account)
create_app(server)         the FastAPI app over it (uvicorn, or a Ray Serve deployment)

Modules, one job each: config, preflight (checks, ladder, grid signal), pool (variant pool and cores), loading
(one variant opened and warmed up), cores (CPU affinity), intake (request checks, tokens, sampling settings),
scheduler (continuous batching), attribution and ledger (per-request energy), metrics, ladder, decisions and
policies (what to change, as pure functions), controller (the control loop), view (what the loop and the
dashboard see), server (composes them), app, routes, status (the status routes and the app of any front end),
streaming, middleware and auth (HTTP), http (uvicorn), dashboard, ray_deploy (Ray Serve), policy_file, protocol,
errors, sampling, text, sse (event framing). The gateway reuses status, middleware, sse, http, the controller,
policies, metrics and the dashboard without `Server`.
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
