"""The gateway's Prometheus metrics: greenlm serve's names where the meaning is the same, each with an
`upstream` label, plus whether each upstream is up and the retries. Energy, carbon and power are read from the
meter groups' ledgers at scrape time, so /metrics and /energy never disagree."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from greenlm.serve.metrics import request_metrics


class _GroupsCollector:
    def __init__(self, gateway):
        self.gateway = gateway

    def describe(self):
        return []

    def collect(self):
        g = self.gateway
        m = g.model_id
        energy = CounterMetricFamily(
            "greenlm:energy_joules",
            "Upstream energy by phase, split from its meter at the gateway; idle: no request in flight; pending: "
            "windows whose requests are still running",
            labels=["model_name", "phase", "upstream"],
        )
        meter_total = CounterMetricFamily(
            "greenlm:meter_energy_joules",
            "The upstream meter's own reading since the gateway started; energy_joules_total sums the same windows",
            labels=["model_name", "meter", "energy_source", "upstream"],
        )
        carbon = CounterMetricFamily(
            "greenlm:carbon_grams", "Grams of CO2e of all upstream energy", labels=["model_name"]
        )
        power = GaugeMetricFamily(
            "greenlm:power_watts",
            "Mean upstream power over the last minute",
            labels=["model_name", "upstream"],
        )
        per_joule = GaugeMetricFamily(
            "greenlm:tokens_per_joule",
            "Generated tokens per joule over the last minute",
            labels=["model_name", "upstream"],
        )
        carbon_total = 0.0
        for group in g.groups:
            snap = group.ledger.snapshot()
            for phase in ("prefill", "decode", "idle", "pending"):
                energy.add_metric([m, phase, group.name], snap[f"{phase}_j"])
            meter_total.add_metric(
                [m, snap["meter"], snap["energy_source"], group.name], snap["meter_total_j"]
            )
            power.add_metric([m, group.name], snap["power_w"])
            per_joule.add_metric([m, group.name], snap["tokens_per_j"])
            carbon_total += snap["carbon_g"]
        carbon.add_metric([m], carbon_total)
        yield from (energy, meter_total, carbon, power, per_joule)
        up = GaugeMetricFamily(
            "greenlm:upstream_up",
            "1 when the upstream passes its health checks",
            labels=["model_name", "upstream", "url"],
        )
        running = GaugeMetricFamily(
            "greenlm:num_requests_running",
            "Requests in flight at the upstream",
            labels=["model_name", "upstream"],
        )
        for u in g.upstreams:
            up.add_metric([m, u.name, u.url], 1.0 if u.up else 0.0)
            running.add_metric([m, u.name], float(u.in_flight))
        yield up
        yield running


class GatewayMetrics:
    def __init__(self, gateway):
        self.model_name = gateway.model_id
        self.registry = registry = CollectorRegistry()
        labels = ["model_name", "upstream"]
        self.requests = request_metrics(
            registry,
            labels,
            {
                "success": "Requests finished, by reason (stop, length, abort: the client went away, error)",
                "ttft": "Arrival at the gateway to first output",
                "itl": "Between consecutive output chunks",
                "e2e": "Arrival at the gateway to the last byte",
            },
        )
        self.retries = Counter(
            "greenlm:upstream_retries",
            "Requests moved to another upstream before their first byte, by why",
            [*labels, "reason"],
            registry=registry,
        )
        registry.register(_GroupsCollector(gateway))
        # what the control loop sets (the same names as serve's)
        self.decisions = Counter(
            "greenlm:policy_decisions",
            "Routing decisions: the upstream new requests go to, and why",
            ["model_name", "from", "to", "reason"],
            registry=registry,
        )
        self.active = Gauge(
            "greenlm:variant_active",
            "1 for the upstream new requests go to first (0 for the others of the ladder)",
            ["model_name", "variant"],
            registry=registry,
        )
        self.intensity = Gauge(
            "greenlm:grid_intensity_grams_per_kwh",
            "Grid carbon intensity now",
            ["model_name"],
            registry=registry,
        )
        self._counts: dict[str, int] = {}

    def finished(self, upstream: str, reason: str) -> None:
        self.requests.success.labels(self.model_name, upstream, reason).inc()
        self._counts[reason] = self._counts.get(reason, 0) + 1

    def request_counts(self) -> dict[str, int]:
        return dict(self._counts)

    def render(self) -> bytes:
        return generate_latest(self.registry)
