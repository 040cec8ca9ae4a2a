"""Work that can wait runs when the grid is clean: OpenAI's Batch API (files and batches) and flex tier, the
carbon-aware planner, grid forecasts, durable jobs, and a gate that pauses training in dirty hours.

Modules, one job each: settings (the grid flags, durations), clock (grid time: a replay's own, or Unix),
forecast (a replayed trace forecast by a stated model, Electricity Maps, WattTime), grid (opens clock, signal
and forecast), planner (pure: when to run what), rates (the server's measured throughput and J/token),
batchfile (input files checked line by line), objects (OpenAI's objects and result lines), state (files,
batches and finished lines kept on disk), runner (what the work runs on: serve, a gateway), manager
(`Deferral`: the loop that plans and runs), routes (the Files and Batches API), offline (`greenlm batch run`),
gate (deferred training).
"""

from greenlm._lazy import lazy

__getattr__, __dir__, __all__ = lazy(
    __name__,
    {
        "GridSettings": "greenlm.defer.settings",
        "parse_duration_s": "greenlm.defer.settings",
        "Slot": "greenlm.defer.planner",
        "Job": "greenlm.defer.planner",
        "Plan": "greenlm.defer.planner",
        "plan": "greenlm.defer.planner",
        "plan_asap": "greenlm.defer.planner",
        "Forecast": "greenlm.defer.forecast",
        "TraceForecaster": "greenlm.defer.forecast",
        "open_grid": "greenlm.defer.grid",
        "Deferral": "greenlm.defer.manager",
        "DeferState": "greenlm.defer.state",
        "RequestRunner": "greenlm.defer.runner",
        "RunResult": "greenlm.defer.runner",
        "batch_router": "greenlm.defer.routes",
    },
)
