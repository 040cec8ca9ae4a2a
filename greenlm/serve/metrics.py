"""Prometheus metrics of one server: vLLM's names under `greenlm:`, plus energy and carbon.

Each server has its own registry (two servers in one process, as in tests or a variant ladder, never mix).
Counters of tokens and requests and the latency histograms are updated by the scheduler as requests finish;
the energy counters and the power and tokens-per-joule gauges are read from the energy ledger at scrape time,
so /metrics and the ledger can never disagree.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from greenlm.serve.ledger import EnergyLedger

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TTFT_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
ITL_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
E2E_BUCKETS_S = (0.1, 0.3, 0.5, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 240.0, 480.0)
ENERGY_BUCKETS_J = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0)


class _LedgerCollector:
    """Energy, carbon and recent power straight from the ledger at every scrape."""

    def __init__(self, ledger: EnergyLedger, model_name: str, phases: tuple[str, ...]):
        self.ledger, self.model_name, self.phases = ledger, model_name, phases

    def describe(self):
        return []

    def collect(self):
        snap = self.ledger.snapshot()
        m = self.model_name
        energy = CounterMetricFamily(
            "greenlm:energy_joules",
            f"Energy by phase (meter {snap['meter']}, {snap['energy_source']}); idle: no request running; load: "
            "an adaptive server loading, unloading or re-threading a variant",
            labels=["model_name", "phase"],
        )
        for phase in self.phases:
            energy.add_metric([m, phase], snap[f"{phase}_j"])
        yield energy
        meter_total = CounterMetricFamily(
            "greenlm:meter_energy_joules",
            "The meter's own reading over the server's life; energy_joules_total sums the same windows (the gap is /energy's invariant_gap_j)",
            labels=["model_name", "meter", "energy_source"],
        )
        meter_total.add_metric([m, snap["meter"], snap["energy_source"]], snap["meter_total_j"])
        yield meter_total
        carbon = CounterMetricFamily(
            "greenlm:carbon_grams",
            "Grams of CO2e of all energy (requests, idle and model loads)",
            labels=["model_name"],
        )
        carbon.add_metric([m], snap["carbon_g"])
        yield carbon
        for name, key, doc in (
            ("greenlm:power_watts", "power_w", "Mean power over the last minute"),
            ("greenlm:tokens_per_joule", "tokens_per_j", "Generated tokens per joule over the last minute"),
        ):
            gauge = GaugeMetricFamily(name, doc, labels=["model_name"])
            gauge.add_metric([m], snap[key])
            yield gauge


class ServeMetrics:
    def __init__(self, model_name: str, ledger: EnergyLedger, *, adaptive: bool = False):
        self.model_name = model_name
        self.registry = registry = CollectorRegistry()
        labels = ["model_name"]

        def histogram(name: str, doc: str, buckets) -> Histogram:
            return Histogram(name, doc, labels, buckets=buckets, registry=registry).labels(model_name)

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, labels, registry=registry).labels(model_name)

        self._running = Gauge(
            "greenlm:num_requests_running", "Requests in engine slots", labels, registry=registry
        )
        self._waiting = Gauge(
            "greenlm:num_requests_waiting", "Requests queued for a slot", labels, registry=registry
        )
        self.prompt_tokens = counter(
            "greenlm:prompt_tokens",
            "Prompt tokens of finished requests (computed or taken from the prefix cache)",
        )
        # prefix reuse, as vLLM counts it (prefix_cache_queries / prefix_cache_hits), in tokens
        self.prefix_queries = counter(
            "greenlm:prefix_cache_queries_tokens",
            "Prompt tokens of admitted requests, looked up in the prefix cache",
        )
        self.prefix_hits = counter(
            "greenlm:prefix_cache_hit_tokens", "Prompt tokens whose KV cells were reused instead of computed"
        )
        self.prefix_avoided = counter(
            "greenlm:prefix_cache_energy_avoided_joules",
            "ESTIMATED prefill energy the reused tokens did not spend: hit tokens x the server's measured prefill "
            "J/token at the time (the split rule's moving average)",
        )
        self.generation_tokens = counter("greenlm:generation_tokens", "Tokens generated")
        self._success = Counter(
            "greenlm:request_success",
            "Requests finished, by reason (stop, length, abort: cancelled or disconnected, error)",
            [*labels, "finished_reason"],
            registry=registry,
        )
        self.ttft = histogram("greenlm:time_to_first_token_seconds", "Arrival to first token", TTFT_BUCKETS_S)
        self.itl = histogram(
            "greenlm:inter_token_latency_seconds", "Between consecutive tokens", ITL_BUCKETS_S
        )
        self.e2e = histogram("greenlm:e2e_request_latency_seconds", "Arrival to last token", E2E_BUCKETS_S)
        self.queue = histogram(
            "greenlm:request_queue_time_seconds", "Arrival to admission into a slot", E2E_BUCKETS_S
        )
        self.energy = histogram(
            "greenlm:request_energy_joules", "Energy attributed to each finished request", ENERGY_BUCKETS_J
        )
        phases = ("prefill", "decode", "idle", "load") if adaptive else ("prefill", "decode", "idle")
        registry.register(_LedgerCollector(ledger, model_name, phases))
        self._counts: dict[str, int] = {}
        self.decisions = Counter(
            "greenlm:policy_decisions",
            "Adaptive-server decisions: what changed (variant, cores, loaded) and why",
            [*labels, "from", "to", "reason"],
            registry=registry,
        )
        self.active = Gauge(
            "greenlm:variant_active",
            "1 for the variant new requests start on (0 for the others of the ladder)",
            [*labels, "variant"],
            registry=registry,
        )
        self.cores = Gauge(
            "greenlm:cores", "CPUs in the server's affinity mask (and its threads)", labels, registry=registry
        )
        self.intensity = Gauge(
            "greenlm:grid_intensity_grams_per_kwh", "Grid carbon intensity now", labels, registry=registry
        )

    def watch_queue(self, running: Callable[[], int], waiting: Callable[[], int]) -> None:
        self._running.labels(self.model_name).set_function(running)
        self._waiting.labels(self.model_name).set_function(waiting)

    def finished(self, reason: str) -> None:
        self._success.labels(self.model_name, reason).inc()
        self._counts[reason] = self._counts.get(reason, 0) + 1

    def request_counts(self) -> dict[str, int]:
        """Requests finished so far, by reason."""
        return dict(self._counts)

    def render(self) -> bytes:
        return generate_latest(self.registry)
