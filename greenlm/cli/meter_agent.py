"""`greenlm meter-agent`: a machine's (or a process tree's) energy as a Prometheus counter, for a gateway on
another host (`greenlm gateway --energy-metric http://HOST:9500/metrics#greenlm:energy_joules_total`)."""

from __future__ import annotations

import os
import signal
import sys

import typer

from greenlm.cli import options
from greenlm.cli.app import app
from greenlm.cli.common import out
from greenlm.cli.gateway import address, check_log_level, emit


@app.command("meter-agent")
def meter_agent(
    port: int = typer.Option(9500, "--port", help="Port of its /metrics (0: any free one)."),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Address to bind (0.0.0.0 for a gateway on another host)."
    ),
    pid: int | None = typer.Option(
        None, "--pid", help="Meter this process and its descendants (default: the whole machine)."
    ),
    meter: str = options.MeterOpt,
    watts_per_core: float | None = options.WattsOpt,
    idle_watts_per_core: float | None = options.IdleWattsOpt,
    log_level: str = typer.Option("warning", "--log-level", help="uvicorn's log level."),
    as_json: bool = typer.Option(
        False, "--json", help="JSON lines on stdout: the startup record when ready."
    ),
) -> None:
    """Export a process's (or the machine's) energy as the Prometheus counter greenlm:energy_joules_total."""
    from greenlm.gateway.agent import MeterAgent, MeterAgentConfig, run_meter_agent
    from greenlm.serve.http import bind_socket

    check_log_level(log_level)
    config = MeterAgentConfig(
        host=host,
        port=port,
        pid=pid,
        meter=meter,
        watts_per_core=watts_per_core,
        idle_watts_per_core=idle_watts_per_core,
    )
    agent = MeterAgent(config)
    try:
        sock = bind_socket(host, port)
        try:
            signals = run_meter_agent(
                agent,
                sock,
                on_ready=lambda: _agent_ready(address(sock) | agent.record(), as_json),
                log_level=log_level,
            )
        finally:
            sock.close()
    finally:
        agent.close()
    if as_json:
        emit({"event": "stopped", "energy_j": agent.total_j})
    if signal.SIGINT in signals:
        raise typer.Exit(130)


def _agent_ready(record: dict, as_json: bool) -> None:
    if as_json:
        emit({"event": "ready", "pid": os.getpid(), **record})
        return
    out.print(
        f"exporting {record['metric']} ({record['meter']}, {record['energy_source']}, scope {record['scope']}) at "
        f"{record['url']}/metrics; {record['note']}",
        markup=False,
        soft_wrap=True,
    )
    sys.stdout.flush()
