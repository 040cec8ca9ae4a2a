"""`greenlm meter-agent`: a machine's (or a process tree's) energy as a Prometheus counter, for a gateway on
another host (`greenlm gateway --energy-metric http://HOST:9500/metrics#greenlm:energy_joules_total`)."""

from __future__ import annotations

import typer

from greenlm.cli import options, serving
from greenlm.cli.app import app


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
    log_level: str = serving.LogLevelOpt,
    as_json: bool = typer.Option(
        False, "--json", help="JSON lines on stdout: the startup record when ready."
    ),
) -> None:
    """Export a process's (or the machine's) energy as the Prometheus counter greenlm:energy_joules_total."""
    from greenlm.energy.settings import EnergySettings
    from greenlm.gateway.agent import MeterAgent, MeterAgentConfig, run_meter_agent

    serving.check_log_level(log_level)
    energy = EnergySettings(
        meter=meter, watts_per_core=watts_per_core, idle_watts_per_core=idle_watts_per_core
    )
    config = MeterAgentConfig(host=host, port=port, pid=pid, energy=energy)
    serving.listen_until_stopped(
        host,
        port,
        lambda: MeterAgent(config),
        lambda agent, sock: run_meter_agent(
            agent,
            sock,
            on_ready=lambda: serving.ready(serving.address(sock) | agent.record(), as_json, _ready_lines),
            log_level=log_level,
        ),
        lambda agent: agent.close(),
        lambda agent: {"energy_j": agent.total_j},
        as_json=as_json,
        stopped_line=lambda summary: None,
    )


def _ready_lines(record: dict) -> list[str]:
    return [
        f"exporting {record['metric']} ({record['meter']}, {record['energy_source']}, scope {record['scope']}) at "
        f"{record['url']}/metrics; {record['note']}"
    ]
