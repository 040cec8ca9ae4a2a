"""GET /dashboard: one self-contained page (inline JS drawing SVG, nothing fetched from elsewhere, so it works
offline) that polls GET /dashboard/data every two seconds: power, tokens per joule and joules per request
over time, running and queued requests, the active variant and every decision, grid intensity and the carbon
rate, and deferred work (the grid forecast, the planner's plan, the work done, its decisions). The data endpoint
is `dashboard_view`: the control loop's samples and decisions after a sequence number, with the state and
energy account of what it watches (a `ServingView`: a server, later a gateway), and what its deferral (if it
has one) planned and did after `defer_since`."""

from __future__ import annotations

import functools
import time
from importlib import resources

from greenlm.serve.controller import Controller
from greenlm.serve.view import ServingView


@functools.cache
def dashboard_html() -> str:
    return resources.files("greenlm.serve").joinpath("dashboard.html").read_text(encoding="utf-8")


def dashboard_view(served: ServingView, controller: Controller, since: int = 0, defer_since: int = 0) -> dict:
    view = controller.view(since)
    energy = served.energy()
    state = served.state()
    stats = served.load_stats(10.0, reset_peak=False)
    policy = controller.policy
    deferral = getattr(served, "deferral", None)
    return {
        "model": served.model_id,
        "adaptive": served.adaptive,
        "now_unix": time.time(),
        "started_unix": controller.started_unix,
        "interval_s": controller.interval_s,
        "state": {
            "variant": state.variant,
            "loaded": state.loaded,
            "cores": state.cores,
            "max_cores": served.max_cores,
            "running": stats.get("running", 0),
            "waiting": stats.get("waiting", 0),
        },
        "energy": {
            k: energy.get(k)
            for k in (
                "meter",
                "energy_source",
                "meter_total_j",
                "requests_j",
                "idle_j",
                "load_j",
                "carbon_g",
                "intensity_g_per_kwh",
                "intensity_source",
                "output_tokens",
                "duration_s",
                "grid_time",
            )
        },  # fmt: skip
        "quality": {
            "max_kld": policy.quality.max_kld if policy else None,
            "mean_kld_served": controller.quality.life_mean(),
        },
        "variants": served.variants(),
        "decision_count": controller.decision_count,
        "defer": deferral.view(defer_since) if deferral is not None else None,
        **view,
    }
