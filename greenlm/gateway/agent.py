"""`greenlm meter-agent`: a machine's (or one process tree's) energy as a Prometheus counter, for a gateway on
another host to scrape (`--energy-metric http://HOST:9500/metrics#greenlm:energy_joules_total`).

    greenlm:energy_joules_total{meter, energy_source, scope}   joules since the agent started
    greenlm:meter_up{meter, scope}                              0 while the metered process is gone

Each scrape reads the meter (a reading at the window's edge, nothing polled in between): a process tree under
the cpu-model estimate (`--pid`), or the whole machine by RAPL and NVML when present, else by the cpu-model
estimate of every core and all the machine's work. A process that ends leaves the counter where it stood.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil
from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from greenlm.energy import Meter, get_meter
from greenlm.energy.composite import CompositeMeter
from greenlm.energy.cpu_model import CpuModelMeter
from greenlm.energy.detect import meter_names
from greenlm.energy.host_model import HostCpuModelMeter
from greenlm.energy.settings import EnergySettings
from greenlm.errors import GreenlmError
from greenlm.serve.config import DEFAULT_HOST, check_whole
from greenlm.serve.http import serve_asgi
from greenlm.serve.metrics import CONTENT_TYPE

log = logging.getLogger(__name__)
METRIC = "greenlm:energy_joules"  # exposed as greenlm:energy_joules_total


@dataclass
class MeterAgentConfig:
    host: str = DEFAULT_HOST
    port: int = 9500
    pid: int | None = None  # None: the whole machine
    # the meter and the cpu-model constants (the grid and PUE are the gateway's business, not the agent's)
    energy: EnergySettings = field(default_factory=EnergySettings)

    def __post_init__(self) -> None:
        check_whole("--port", self.port, 0, 65535)
        if self.pid is not None:
            check_whole("--pid", self.pid, 1)
        self.energy = EnergySettings.coerce(self.energy)
        if self.pid is not None and meter_names(self.energy.meter) not in (["auto"], ["cpu-model"]):
            raise GreenlmError(
                "--pid meters one process tree, which only the cpu-model estimate can: drop --meter or use cpu-model "
                "(RAPL and NVML count the whole machine: drop --pid)"
            )


def agent_meter(config: MeterAgentConfig) -> tuple[Meter, str, str]:
    """(the meter, its scope label, a note saying what it counts)."""
    energy = config.energy
    if config.pid is not None:
        try:
            name = psutil.Process(config.pid).name()
        except psutil.Error as exc:
            raise GreenlmError(
                f"--pid {config.pid}: no such process here ({exc}): give a running pid"
            ) from None
        meter = CpuModelMeter(
            energy.watts_per_core,
            idle_watts_per_core=energy.idle_watts_per_core,
            include_children=True,
            pid=config.pid,
        )
        note = (
            f"meter: cpu-model (estimated) of process {config.pid} ({name}) and its descendants: "
            f"{meter.idle_watts_per_core:.3g} W per allotted core ({meter.idle_source}) + "
            f"{meter.dynamic_watts_per_core:.3g} W per busy core ({meter.watts_source})"
        )
        return meter, f"pid:{config.pid}", note
    meter = energy.open_meter()
    if "cpu-model" not in meter.name.split("+"):
        return meter, "host", meter.selection_note + " (the whole machine)"
    meter.close()  # the settings' cpu-model counts this process: the agent counts the machine
    host = HostCpuModelMeter(energy.watts_per_core, idle_watts_per_core=energy.idle_watts_per_core)
    parts: list[Meter] = [host]
    if "nvml" in meter.name.split("+"):
        parts.append(get_meter("nvml"))
    combined = host if len(parts) == 1 else CompositeMeter(parts)
    note = (
        f"meter: {combined.name} (estimated) of the whole machine (no RAPL): {host.idle_watts_per_core:.3g} W per "
        f"core for every second + {host.dynamic_watts_per_core:.3g} W per busy core ({host.watts_source})"
    )
    return combined, "host", note


class MeterAgent:
    def __init__(self, config: MeterAgentConfig):
        self.config = config
        self.meter, self.scope, self.note = agent_meter(config)
        self._lock = threading.Lock()
        self._start = self.meter.read()
        self.total_j = 0.0
        self.up = True
        self.registry = CollectorRegistry()
        self.registry.register(self)

    def read_total(self) -> float:
        """Joules since the agent started, read now (the last total while the process is gone)."""
        with self._lock:
            try:
                reading = self.meter.read()
            except psutil.Error as exc:
                if self.up:
                    log.warning(
                        "meter-agent: the metered process is gone (%s): the counter stays at %.3f J",
                        exc,
                        self.total_j,
                    )
                self.up = False
                return self.total_j
            total = self.meter.measure(self._start, reading).total_j
            if math.isfinite(total) and total >= self.total_j:
                self.total_j = total
            self.up = True
            return self.total_j

    def describe(self):
        return []

    def collect(self):
        total = self.read_total()
        m = self.meter
        counter = CounterMetricFamily(
            METRIC,
            f"Energy since the agent started ({m.name}, {m.energy_source}; scope {self.scope})",
            labels=["meter", "energy_source", "scope"],
        )
        counter.add_metric([m.name, m.energy_source, self.scope], total)
        yield counter
        up = GaugeMetricFamily(
            "greenlm:meter_up", "1 while the metered process exists", labels=["meter", "scope"]
        )
        up.add_metric([m.name, self.scope], 1.0 if self.up else 0.0)
        yield up

    def record(self) -> dict:
        return {
            "meter": self.meter.name,
            "energy_source": self.meter.energy_source,
            "scope": self.scope,
            "metric": METRIC + "_total",
            "note": self.note,
        }

    def close(self) -> None:
        self.meter.close()


def create_agent_app(agent: MeterAgent) -> FastAPI:
    app = FastAPI(title="greenlm meter-agent", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/metrics")
    async def metrics():
        return Response(await asyncio.to_thread(generate_latest, agent.registry), media_type=CONTENT_TYPE)

    @app.get("/health")
    async def health():
        return {"status": "ok", **agent.record()}

    return app


def run_meter_agent(
    agent: MeterAgent,
    sock: socket.socket,
    *,
    on_ready: Callable[[], None] = lambda: None,
    log_level: str = "warning",
) -> list[int]:
    """Serve the agent's /metrics on the bound `sock` until a signal; the signals received."""
    return serve_asgi(
        create_agent_app(agent),
        sock,
        stop_accepting=lambda: None,
        drain_timeout_s=5.0,
        on_ready=on_ready,
        log_level=log_level,
    )
