"""`greenlm serve --ray`: the same FastAPI app (`create_app`) as a Ray Serve deployment whose replicas
autoscale.

Each replica is a `Server` of its own (its model, scheduler, meter and energy ledger), so a request's energy
is attributed on the replica that served it, and its `usage` names that replica. Replicas push their
Prometheus text and energy account to a small named actor (`MetricsHub`) every second; /metrics on any
replica answers with every replica's series, each labelled `replica` (a replica scaled away keeps its last
figures there, so counters never go backwards), and /energy with the sum over replicas and each one's
account. Custom autoscaling (`CarbonQueuePolicy`): replicas for the ongoing requests at
`target_ongoing_requests` each, one more while greenlm's own queues hold requests, and, when the grid is at or
above `high_g_per_kwh`, `carbon_factor` times the requests per replica (fewer replicas: less static power at
the dirtiest hours); Ray applies min/max and the up/down delays.

With the cpu-model meter each replica charges static power for the cores its process may use; replicas on
one host share those cores, so their static parts overlap (each replica's figure is its own process's view).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from greenlm.cluster import init_ray
from greenlm.errors import GreenlmError
from greenlm.serve.app import create_app
from greenlm.serve.config import ServeConfig
from greenlm.serve.preflight import preflight
from greenlm.serve.server import Server

log = logging.getLogger(__name__)

HUB_NAME = "greenlm-metrics-hub"
NAMESPACE = "greenlm"
APP_NAME = "greenlm"
PUSH_EVERY_S = 1.0
ENV_PASSED = ("PYTHONPATH", "GREENLM_CACHE_DIR", "GREENLM_DB", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
SUMMED = (
    "requests_j",
    "prefill_j",
    "decode_j",
    "idle_j",
    "load_j",
    "meter_total_j",
    "carbon_g",
    "output_tokens",
)


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None
    min_replicas: int = 1
    max_replicas: int = 4
    target_ongoing_requests: float = 2.0
    upscale_delay_s: float = 3.0
    downscale_delay_s: float = 30.0
    cpus_per_replica: float = 1.0
    high_g_per_kwh: float | None = None  # the carbon factor applies at or above this grid intensity
    carbon_factor: float = 2.0

    def __post_init__(self) -> None:
        if not (isinstance(self.min_replicas, int) and self.min_replicas >= 0):
            raise GreenlmError(f"--min-replicas must be a whole number >= 0, got {self.min_replicas!r}")
        if not (isinstance(self.max_replicas, int) and self.max_replicas >= max(1, self.min_replicas)):
            raise GreenlmError(
                f"--max-replicas must be at least 1 and at least --min-replicas ({self.min_replicas}), "
                f"got {self.max_replicas!r}"
            )
        if not (self.target_ongoing_requests > 0 and math.isfinite(self.target_ongoing_requests)):
            raise GreenlmError(
                f"--target-ongoing-requests must be above 0, got {self.target_ongoing_requests}"
            )
        if not self.cpus_per_replica > 0:
            raise GreenlmError(f"CPUs per replica must be above 0, got {self.cpus_per_replica}")

    def autoscaling_config(self) -> dict:
        return {
            "min_replicas": self.min_replicas,
            "initial_replicas": max(1, self.min_replicas),
            "max_replicas": self.max_replicas,
            "target_ongoing_requests": self.target_ongoing_requests,
            "upscale_delay_s": self.upscale_delay_s,
            "downscale_delay_s": self.downscale_delay_s,
            "metrics_interval_s": 0.5,
            "look_back_period_s": 2.0,
            "policy": {
                "policy_function": f"{__name__}:CarbonQueuePolicy",
                "policy_kwargs": {"high_g_per_kwh": self.high_g_per_kwh, "carbon_factor": self.carbon_factor},
            },
        }


# ---- the autoscaling policy (a pure function of Ray's context; tested with a stand-in) ---------------------
class CarbonQueuePolicy:
    def __init__(self, high_g_per_kwh: float | None = None, carbon_factor: float = 2.0):
        self.high_g_per_kwh = high_g_per_kwh
        self.carbon_factor = carbon_factor

    def __call__(self, ctx) -> tuple[int, dict]:
        target = ctx.config.get_target_ongoing_requests()
        metrics = ctx.aggregated_metrics or {}
        waiting = sum((metrics.get("greenlm_waiting") or {}).values())
        intensities = list((metrics.get("greenlm_grid_intensity") or {}).values())
        intensity = max(intensities) if intensities else None
        per_replica = target
        why = "ongoing requests"
        if self.high_g_per_kwh is not None and intensity is not None and intensity >= self.high_g_per_kwh:
            per_replica = target * self.carbon_factor
            why = f"grid {intensity:.0f} g/kWh >= {self.high_g_per_kwh:g}: {self.carbon_factor:g}x requests per replica"
        desired = math.ceil(ctx.total_num_requests / per_replica) if ctx.total_num_requests > 0 else 0
        if waiting > 0:  # greenlm's own queues are full: every slot of the current replicas is busy
            desired = max(desired, ctx.current_num_replicas + 1)
            why += f"; {waiting:.0f} waiting for a slot"
        desired = max(ctx.capacity_adjusted_min_replicas, min(desired, ctx.capacity_adjusted_max_replicas))
        state = dict(ctx.policy_state or {})
        state["greenlm_reason"] = why
        return desired, state


# ---- metrics across replicas ------------------------------------------------------------------------------
def merge_metrics(texts: dict[str, str]) -> bytes:
    """Every replica's Prometheus text as one exposition, each sample labelled with its replica."""
    families: dict[str, Metric] = {}
    for replica, text in sorted(texts.items()):
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(family.name, family.documentation, family.type)
            for s in family.samples:
                merged.add_sample(s.name, {**s.labels, "replica": replica}, s.value, s.timestamp, s.exemplar)

    class _Collector:
        def collect(self):
            yield from families.values()

    registry = CollectorRegistry()
    registry.register(_Collector())
    return generate_latest(registry)


def merge_energy(accounts: dict[str, dict]) -> dict:
    total = {k: sum(a.get(k) or 0.0 for a in accounts.values()) for k in SUMMED}
    gap = total["requests_j"] + total["idle_j"] + total["load_j"] - total["meter_total_j"]
    some = next(iter(accounts.values()), {})
    return {
        **total,
        "meter": some.get("meter"),
        "energy_source": some.get("energy_source"),
        "invariant_gap_j": gap,
        "invariant_gap_rel": abs(gap) / total["meter_total_j"] if total["meter_total_j"] > 0 else 0.0,
        "replicas": accounts,
    }


class MetricsHub:
    """The last metrics text and energy account each replica pushed."""

    def __init__(self):
        self.texts: dict[str, str] = {}
        self.energy: dict[str, dict] = {}
        self.seen: dict[str, float] = {}

    def put(self, replica: str, text: str, energy: dict) -> None:
        self.texts[replica], self.energy[replica], self.seen[replica] = text, energy, time.time()

    def get(self) -> tuple[dict, dict, dict]:
        return self.texts, self.energy, self.seen


# ---- the replica ------------------------------------------------------------------------------------------
class Replica:
    """One Serve replica: a Server and the shared app, with its metrics pushed to the hub."""

    def __init__(self, config: dict):
        import ray
        from ray import serve

        self.server = Server(ServeConfig(**config))
        context = serve.get_replica_context()
        self.replica = context.replica_id.unique_id
        self.server.replica = self.replica
        self._hub = ray.get_actor(HUB_NAME, namespace=NAMESPACE)
        self._stop = threading.Event()
        self._pusher = threading.Thread(target=self._push_loop, name="greenlm-metrics-push", daemon=True)
        self._pusher.start()

    def _push(self) -> None:
        self._hub.put.remote(self.replica, self.server.metrics.render().decode(), self.server.energy())

    def _push_loop(self) -> None:
        while not self._stop.wait(PUSH_EVERY_S):
            try:
                self._push()
            except Exception:  # the hub is gone (shutting down): nothing to report to
                log.info("replica %s: the metrics hub is gone; pushing stops", self.replica, exc_info=True)
                return

    async def _all(self):
        self._push()
        return await self._hub.get.remote()

    async def metrics_text(self) -> bytes:
        texts, _, _ = await self._all()
        texts = dict(texts, **{self.replica: self.server.metrics.render().decode()})
        return await asyncio.to_thread(merge_metrics, texts)

    async def energy_account(self) -> dict:
        _, accounts, seen = await self._all()
        merged = merge_energy(dict(accounts, **{self.replica: self.server.energy()}))
        now = time.time()
        merged["live_replicas"] = sorted(r for r, t in seen.items() if now - t < 3 * PUSH_EVERY_S)
        merged["served_by"] = self.replica
        return merged

    def __serve_build_asgi_app__(self):
        return create_app(self.server, metrics=self.metrics_text, energy=self.energy_account)

    def record_autoscaling_stats(self) -> dict:
        sched = self.server.scheduler
        return {
            "greenlm_waiting": float(sched.waiting),
            "greenlm_running": float(sched.running),
            "greenlm_grid_intensity": float(self.server.ledger.intensity_g_per_kwh),
        }

    def __del__(self):
        self._stop.set()
        try:
            self._push()  # its final figures stay in the hub after it is gone
        except Exception:  # the hub went first (Ray shutting down): /energy and /metrics lose this replica
            log.warning(
                "replica %s: cannot push its final metrics and energy account to the hub; the merged /energy "
                "and /metrics will miss what it did since its last push",
                self.replica,
                exc_info=True,
            )
        self.server.close(drain_timeout_s=self.server.config.drain_timeout_s)


def deployment(config: ServeConfig, options: RayOptions):
    """The Serve application: the replica class with the app late-bound (built on each replica)."""
    from ray import serve

    cls = serve.ingress()(Replica)
    return serve.deployment(
        cls,
        name="greenlm",
        autoscaling_config=options.autoscaling_config(),
        ray_actor_options={"num_cpus": options.cpus_per_replica},
        max_ongoing_requests=config.max_batch + config.max_queue,
        graceful_shutdown_timeout_s=config.drain_timeout_s,
    ).bind(asdict(config))


def start(config: ServeConfig, options: RayOptions, *, announce=None) -> str:
    """Start (or join) Ray, the hub and the Serve application; its URL."""
    try:
        import ray
        from ray import serve
    except ImportError:
        raise GreenlmError("--ray needs Ray Serve: pip install 'greenlm[ray]'") from None
    env = {k: os.environ[k] for k in ENV_PASSED if k in os.environ}
    init_ray(options.address, namespace=NAMESPACE, runtime_env={"env_vars": env} if env else None)
    hub = (
        ray.remote(num_cpus=0)(MetricsHub)
        .options(name=HUB_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True)
        .remote()
    )
    ray.get(hub.get.remote(), timeout=120)  # alive before any replica looks for it
    serve.start(
        http_options={"host": config.host, "port": config.port}, logging_config={"log_level": "WARNING"}
    )
    serve.run(deployment(config, options), name=APP_NAME, route_prefix="/", blocking=False)
    host = f"[{config.host}]" if ":" in config.host else config.host
    return f"http://{host}:{config.port}"


def replicas() -> int:
    """Running replicas of the greenlm deployment now."""
    from ray import serve

    status = serve.status().applications.get(APP_NAME)
    if status is None:
        return 0
    dep = status.deployments.get("greenlm")
    return int(dep.replica_states.get("RUNNING", 0)) if dep is not None else 0


def stop() -> dict | None:
    """Delete the application (replicas drain and push their last figures) and read the hub; then shut down
    the Ray instance this process started (a cluster it joined keeps running, less this application)."""
    import ray
    from ray import serve

    account = None
    try:
        serve.delete(APP_NAME)
        hub = ray.get_actor(HUB_NAME, namespace=NAMESPACE)
        _, accounts, _ = ray.get(hub.get.remote(), timeout=30)
        account = merge_energy(accounts)
        ray.kill(hub)
    except Exception:  # a Ray that is already going away: there is nothing left to read
        log.warning(
            "cannot read the replicas' final energy account from Ray (it is shutting down): the stop record "
            "has no energy figures",
            exc_info=True,
        )
    ray.shutdown()  # a local instance goes with it, Serve's controller and proxy included
    return account


def run_ray(config: ServeConfig, options: RayOptions, *, as_json: bool, announce=None, emit=None) -> int:
    """The CLI's --ray: checks first, then Ray; serves until SIGTERM or Ctrl-C; the signal's exit code."""
    preflight(config, announce or (lambda _m: None))  # every cheap check before Ray starts
    if config.port == 0:
        raise GreenlmError("--ray needs a fixed --port (Ray Serve's proxy binds it)")
    stop_event = threading.Event()
    received: list[int] = []
    previous: dict = {}
    real_stdout = sys.stdout
    if emit is not None:  # Ray prints its processes' messages on stdout: --json lines stay alone there
        plain = emit

        def emit(record: dict) -> None:
            with contextlib.redirect_stdout(real_stdout):
                plain(record)

    with contextlib.redirect_stdout(sys.stderr):
        return _serve_until_signal(config, options, announce, emit, stop_event, received, previous)


def _serve_until_signal(config, options, announce, emit, stop_event, received, previous) -> int:
    def handler(sig, _frame):
        received.append(sig)
        stop_event.set()

    try:
        url = start(config, options, announce=announce)
        # after ray.init, which installs handlers of its own: ours drain the app and exit cleanly
        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        if emit:
            emit(
                {
                    "event": "ready",
                    "url": url,
                    "ray": asdict(options),
                    "replicas": replicas(),
                    "model": config.model,
                }
            )
        while not stop_event.wait(1.0):
            pass
    finally:
        account = stop()
        for s, h in previous.items():
            signal.signal(s, h)
    if emit:
        emit({"event": "stopped", **(account or {})})
    return 130 if signal.SIGINT in received else 0
