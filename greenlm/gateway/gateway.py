"""The gateway as a library object: its upstreams and their health, the meters and energy accounts, the
routing and its control loop, the relay of requests. It is what serve's control loop and dashboard see
(`greenlm.serve.view.ControlTarget`), so serve's policies route among upstreams unchanged.

    gateway = Gateway(GatewayConfig(upstreams=["http://127.0.0.1:8080"]))
    app = create_gateway_app(gateway)       # FastAPI; `run_gateway` serves it as `greenlm gateway` does
    gateway.close()

At start every upstream is asked what it serves. Decided: the gateway starts when at least one upstream
answers; the others start marked down (said once) and get requests once a health check passes. When none
answers it refuses to start, with one line naming each and why.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from greenlm.errors import GreenlmError
from greenlm.gateway.config import GatewayConfig
from greenlm.gateway.energy_metric import PrometheusCounterMeter
from greenlm.gateway.load import LoadTracker
from greenlm.gateway.meter_group import MeterGroup
from greenlm.gateway.meters import is_local_host, local_meter, resolve_local_meters, shares_package
from greenlm.gateway.metrics import GatewayMetrics
from greenlm.gateway.plan import GatewayPlan, plan_gateway
from greenlm.gateway.proxy import Relay
from greenlm.gateway.upstream import HealthChecks, Upstream
from greenlm.grid.reading import GridReading
from greenlm.grid.signal import grid_signal
from greenlm.io import noop
from greenlm.paths import default_db_path
from greenlm.serve.controller import Controller
from greenlm.serve.decisions import Decision, SwitchVariant
from greenlm.serve.policies import State, start_variant

log = logging.getLogger(__name__)

SUMMED = ("meter_total_j", "windows_j", "requests_j", "prefill_j", "decode_j", "idle_j", "pending_j", "unattributed_j",
          "carbon_g", "output_tokens", "requests", "in_flight", "invariant_gap_j")  # fmt: skip


@dataclass(frozen=True)
class Finished:
    """A request as the control loop's quality window counts it."""

    finish_reason: str
    energy_j: float
    variant: str
    completion_tokens: int


class Gateway:
    def __init__(
        self,
        config: GatewayConfig,
        *,
        announce: Callable[[str], None] | None = None,
        plan: GatewayPlan | None = None,
    ):
        """Probe the upstreams, open the meters and start the health checks, the meter clocks and the control
        loop. `plan`: `plan_gateway(config)` when the caller has it already (the CLI checks before binding)."""
        self.announce = announce or noop
        self.plan = plan = plan or plan_gateway(config)
        self.config = config = plan.config
        self.policy = plan.policy
        self.adaptive = plan.policy is not None
        self.ladder = plan.ladder
        self.tokens = plan.tokens
        self.accepting = True
        order = {name: i for i, name in enumerate(self.ladder.names)}
        by_name = {s.name: s for s in plan.specs}
        self.upstreams = [Upstream(by_name[n], plan.keys[n], order[n]) for n in self.ladder.names]
        self.health_checks = HealthChecks(
            self.upstreams, config.health_interval_s, config.connect_timeout_s + 5.0
        )
        self.groups: list[MeterGroup] = []
        self.controller: Controller | None = None
        self._served: dict[str, int] = {}
        self._final_energy: dict | None = None
        try:
            self._start()
        except BaseException:
            self._release()
            raise
        self.started_s = time.time()

    def _start(self) -> None:
        config, plan = self.config, self.plan
        self.health_checks.probe_all()
        if not any(u.up for u in self.upstreams):
            why = "; ".join(f"{u.name} ({u.url}): {u.reason}" for u in self.upstreams)
            raise GreenlmError(f"no upstream answers: {why}: start one first, or check the URL")
        for u in self.upstreams:
            if not u.up:
                self.announce(
                    f"upstream {u.name} ({u.url}) is down at start ({u.reason}): it gets requests once a health "
                    "check passes"
                )
        given = [u for s in plan.specs for u in self.upstreams if u.name == s.name]
        self.model_id = config.served_model_name or next(
            (u.model_id for u in given if u.up and u.model_id), "gateway"
        )
        self._open_meters()
        self.load = LoadTracker()
        self.metrics = GatewayMetrics(self)
        self.grid = grid_signal(self.policy.grid if self.policy else None, plan.carbon.grid)
        self.active = start_variant(self.policy, self.ladder).name if self.policy else self.ladder.names[0]
        for v in self.ladder:
            self.metrics.active.labels(self.model_id, v.name).set(1.0 if v.name == self.active else 0.0)
        store_path = (config.db or default_db_path()) if self.adaptive else None
        self.controller = Controller(
            self, self.policy, self.ladder, self.grid, self.metrics,
            identity=lambda: {"gateway": [u.url for u in self.upstreams]}, announce=self.announce,
            store_path=store_path,
        )  # fmt: skip
        self.relay = Relay(self)
        for group in self.groups:
            group.start()
            self.announce(group.note)
        self.health_checks.start()
        self.controller.start()

    def _open_meters(self) -> None:
        config, plan = self.config, self.plan
        local = [u for u in self.upstreams if u.name not in plan.metrics]
        for u in local:
            if not is_local_host(u.spec.host):
                raise GreenlmError(
                    f"upstream {u.name} ({u.url}) is on another host, so the gateway cannot meter it here: give "
                    "--energy-metric URL#METRIC (a Prometheus energy counter there, e.g. DCGM's; `greenlm "
                    "meter-agent` exports one)"
                )
        interval, energy = config.scrape_interval_s, config.energy
        ledger_args = dict(
            interval_s=interval, intensity_g_per_kwh=plan.carbon.grid.intensity_g_per_kwh, pue=plan.carbon.pue
        )
        if local:
            names, why_not = resolve_local_meters(energy.meter)
            sets = [local] if shares_package(names) and len(local) > 1 else [[u] for u in local]
            for members in sets:
                hosts = [(u.spec.host, u.spec.port, u.spec.pid, u.up) for u in members]
                meter, note = local_meter(names, hosts, energy, why_not)
                self._group(members, meter, note, local=True, **ledger_args)
        remote: dict[str, list[Upstream]] = {}
        for u in self.upstreams:
            if u.name in plan.metrics:
                remote.setdefault(plan.metrics[u.name].text, []).append(u)
        for members in remote.values():
            meter = PrometheusCounterMeter(
                plan.metrics[members[0].name], timeout_s=max(1.0, min(10.0, interval * 2))
            )
            self._group(members, meter, meter.note, local=False, **ledger_args)

    def _group(self, members: list[Upstream], meter, note: str, **kwargs) -> None:
        if len(members) == 1:  # its meter is its own: its own split weights apply (greenlm serve's)
            client, timeout_s = self.health_checks.client, min(2.0, self.config.scrape_interval_s)
            kwargs["upstream_costs"] = lambda u=members[0]: u.phase_costs(client, timeout_s)
        try:
            group = MeterGroup(
                "+".join(u.name for u in members), meter, note, upstreams=[u.name for u in members], **kwargs
            )
        except BaseException:
            meter.close()
            raise
        self.groups.append(group)
        for u in members:
            u.group = group

    # ---- routing -----------------------------------------------------------------------------------------
    def route(self) -> list[Upstream]:
        """The upstreams to try for a new request, in order. With a policy: the active one (the control
        loop's choice) first; without: the one with the fewest requests in flight. Then the others that are
        up, in the ladder's order. A down upstream is tried only when none is up."""
        up = [u for u in self.upstreams if u.up]
        if not up:
            return list(self.upstreams)
        if self.policy is not None:
            return sorted(up, key=lambda u: (u.name != self.active, u.index))
        return sorted(up, key=lambda u: (u.in_flight, u.index))

    def finished(self, upstream: str, reason: str, completion_tokens: int, energy_j: float | None) -> None:
        self._served[upstream] = self._served.get(upstream, 0) + completion_tokens
        if self.controller is not None:
            self.controller.on_finish(Finished(reason, energy_j or 0.0, upstream, completion_tokens))

    def stop_accepting(self) -> None:
        self.accepting = False

    # ---- what the control loop and the dashboard see (serve.view.ControlTarget) ---------------------------
    @property
    def max_cores(self) -> int:
        return 1  # the gateway does not move an upstream's cores: core decisions never arise

    def state(self) -> State:
        return State(variant=self.active, cores=1, loaded=True)

    def load_stats(self, recent_s: float, *, reset_peak: bool = True) -> dict:
        return self.load.stats(recent_s, reset_peak=reset_peak)

    def ledger_snapshot(self) -> dict:
        snaps = [g.ledger.snapshot() for g in self.groups]
        total = {k: sum(s[k] for s in snaps) for k in SUMMED}
        meters = sorted({s["meter"] for s in snaps})
        total["meter"] = "+".join(meters)
        total["energy_source"] = (
            "measured" if all(s["energy_source"] == "measured" for s in snaps) else "estimated"
        )
        total["duration_s"] = max((s["duration_s"] for s in snaps), default=0.0)
        total["intensity_g_per_kwh"] = snaps[0]["intensity_g_per_kwh"] if snaps else None
        total["invariant_gap_rel"] = (
            abs(total["invariant_gap_j"]) / total["meter_total_j"] if total["meter_total_j"] else 0.0
        )
        total["power_w"] = sum(s["power_w"] for s in snaps)
        total["load_j"] = 0.0  # the dashboard's field: a gateway loads no model
        return total

    def energy(self) -> dict:
        """The energy account: every meter's totals summed, then each meter's own, with the grid."""
        if self._final_energy is not None:
            return dict(self._final_energy)
        snap = self.ledger_snapshot()
        reading = self.controller.grid_reading if self.controller else self.grid.now()
        snap["intensity_source"] = reading.source
        snap["grid_time"] = reading.trace_time
        snap["pue"] = self.plan.carbon.pue
        snap["meters"] = [{**g.describe(), **g.ledger.snapshot()} for g in self.groups]
        return snap

    def variants(self) -> list[dict]:
        budget = self.policy.quality.max_kld if self.policy else None
        by_name = {u.name: u for u in self.upstreams}
        return [
            dict(
                v,
                url=by_name[v["name"]].url,
                up=by_name[v["name"]].up,
                loaded=by_name[v["name"]].up,
                active=v["name"] == self.active,
                in_flight=by_name[v["name"]].in_flight,
                tokens_served=self._served.get(v["name"], 0),
            )
            for v in self.ladder.to_list(budget)
        ]

    def follow_grid(self, reading: GridReading) -> None:
        for g in self.groups:
            g.ledger.set_intensity(reading.intensity_g_per_kwh)

    def apply(self, decision: Decision) -> dict:
        if not isinstance(decision, SwitchVariant):
            return {"error": f"a gateway does not carry out {decision.kind} decisions"}
        self.active = decision.to
        for v in self.ladder:
            self.metrics.active.labels(self.model_id, v.name).set(1.0 if v.name == self.active else 0.0)
        return {}

    # ---- state --------------------------------------------------------------------------------------------
    def healthy(self) -> bool:
        return any(u.up for u in self.upstreams)

    def health(self) -> dict:
        """What /health answers: ok while an upstream is up (else 503 naming why each is down)."""
        if not self.healthy():
            down = "; ".join(f"{u.name}: {u.reason}" for u in self.upstreams)
            return {"status": "down", "reason": f"no upstream is up ({down})", "code": "no_upstream"}
        return {"status": "ok", "model": self.model_id, "upstreams": {u.name: u.up for u in self.upstreams}}

    def describe(self) -> dict:
        return {
            "model": self.model_id,
            "upstreams": [u.describe() for u in self.upstreams],
            "meters": [g.describe() for g in self.groups],
            "intensity_g_per_kwh": self.plan.carbon.grid.intensity_g_per_kwh,
            "intensity_source": self.grid.now().source,
            "pue": self.plan.carbon.pue,
            "policy": self.policy.to_dict() if self.policy else None,
            "routing": "policy" if self.policy else "fewest requests in flight",
            "active": self.active,
            "tokenizer": self.tokens.describe() if self.tokens else None,
            "timeouts_s": {
                "connect": self.config.connect_timeout_s,
                "first_byte": self.config.first_byte_timeout_s,
                "idle": self.config.idle_timeout_s,
            },
            "scrape_interval_s": self.config.scrape_interval_s,
            "health_interval_s": self.config.health_interval_s,
            "auth": self.config.api_key is not None,
        }

    def close(self) -> None:
        """Stop routing and health checks, close a last window on every meter (requests that ended are
        booked) and release the meters."""
        if self.controller is not None:
            self.controller.close()
        self.health_checks.close()
        for g in self.groups:
            g.stop()
        if self.groups and self._final_energy is None:
            self._final_energy = self.energy()
        self._release()

    def _release(self) -> None:
        self.health_checks.close()
        for g in self.groups:
            g.close()
