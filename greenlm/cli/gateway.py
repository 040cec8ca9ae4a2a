"""`greenlm gateway`: OpenAI's API in front of servers you already run, with every request's energy and carbon
in its usage."""

from __future__ import annotations

import json
import os
import signal
import sys

import typer

from greenlm.cli import options
from greenlm.cli.app import app
from greenlm.cli.common import note, out
from greenlm.errors import GreenlmError
from greenlm.gateway.config import API_KEY_ENV, GatewayConfig

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def _d(name: str):
    return options.default(GatewayConfig, name)


def emit(record: dict) -> None:
    sys.stdout.write(json.dumps(record, default=str) + "\n")
    sys.stdout.flush()


def address(sock) -> dict:
    from greenlm.serve.http import socket_url

    host, port = sock.getsockname()[:2]
    return {"url": socket_url(sock), "host": host, "port": port}


def check_log_level(log_level: str) -> None:
    if log_level not in LOG_LEVELS:
        raise GreenlmError(f"unknown --log-level '{log_level}': choose one of {', '.join(LOG_LEVELS)}")


@app.command()
@options.energy_options
def gateway(
    upstream: list[str] | None = typer.Option(
        None,
        "--upstream",
        help="An OpenAI-compatible server's URL, e.g. http://127.0.0.1:8080 (repeat for several).",
    ),
    upstream_key_env: list[str] | None = typer.Option(
        None,
        "--upstream-key-env",
        help="Environment variable holding an upstream's API key (once per --upstream, or once for all).",
    ),
    energy_metric: list[str] | None = typer.Option(
        None,
        "--energy-metric",
        help="An upstream on another host: its Prometheus energy counter, URL#METRIC[;unit=mJ] (once per --upstream).",
    ),
    upstream_pid: list[int] | None = typer.Option(
        None, "--upstream-pid", help="An upstream on this host: its process (default: found by its port)."
    ),
    policy: str | None = typer.Option(
        None,
        "--policy",
        help="A policy YAML whose ladder lists the upstreams (url, figures) and the routing policies.",
    ),
    max_kld: float | None = typer.Option(
        None, "--max-kld", help="Quality budget of the ladder (token-weighted mean KLD)."
    ),
    db: str | None = options.DbOpt,
    host: str = typer.Option(_d("host"), "--host", help="Address to bind (0.0.0.0: every interface)."),
    port: int = typer.Option(_d("port"), "--port", help="Port (0: any free one, printed at start)."),
    api_key: str | None = typer.Option(
        None,
        "--api-key",
        help=f"Require 'Authorization: Bearer KEY' on /v1, /energy and /dashboard (or set ${API_KEY_ENV}).",
    ),
    served_model_name: str | None = typer.Option(
        None, "--served-model-name", help="The model id clients send (default: the first upstream's)."
    ),
    tokenizer: str | None = typer.Option(
        None,
        "--tokenizer",
        help="A tokenizer dir or .gguf to count tokens when an upstream reports no usage.",
    ),
    scrape_interval_s: float = typer.Option(
        _d("scrape_interval_s"),
        "--scrape-interval-s",
        help="Seconds between readings of each upstream's meter.",
    ),
    health_interval_s: float = typer.Option(
        _d("health_interval_s"), "--health-interval-s", help="Seconds between health checks of each upstream."
    ),
    connect_timeout_s: float = typer.Option(
        _d("connect_timeout_s"), "--connect-timeout-s", help="Connecting to an upstream."
    ),
    first_byte_timeout_s: float = typer.Option(
        _d("first_byte_timeout_s"),
        "--first-byte-timeout-s",
        help="A stream's first event, or a whole non-streaming answer; past it, the next upstream.",
    ),
    idle_timeout_s: float = typer.Option(
        _d("idle_timeout_s"),
        "--idle-timeout-s",
        help="Between two events of a stream; past it, an error event.",
    ),
    energy: options.EnergyFlags = options.EnergyOpts,
    max_body_bytes: int = typer.Option(
        _d("max_body_bytes"), "--max-body-bytes", help="Larger request bodies get 413."
    ),
    drain_timeout: float = typer.Option(
        _d("drain_timeout_s"), "--drain-timeout", help="Seconds in-flight requests get to finish on SIGTERM."
    ),
    log_level: str = typer.Option("warning", "--log-level", help="uvicorn's log level."),
    access_log: bool = typer.Option(False, "--access-log", help="Log every request (uvicorn's access log)."),
    as_json: bool = typer.Option(
        False, "--json", help="JSON lines on stdout: the startup record when ready, a summary when stopped."
    ),
) -> None:
    """Relay OpenAI's API to upstream servers; every response's usage gains its energy and carbon."""
    from greenlm.gateway.gateway import Gateway
    from greenlm.gateway.http import run_gateway
    from greenlm.gateway.plan import plan_gateway
    from greenlm.serve.http import bind_socket

    check_log_level(log_level)
    config = GatewayConfig(
        upstreams=upstream or [],
        upstream_key_envs=upstream_key_env or [],
        energy_metrics=energy_metric or [],
        upstream_pids=upstream_pid or [],
        policy=policy,
        max_kld=max_kld,
        db=db,
        host=host,
        port=port,
        api_key=api_key if api_key is not None else os.environ.get(API_KEY_ENV),
        served_model_name=served_model_name,
        tokenizer=tokenizer,
        scrape_interval_s=scrape_interval_s,
        health_interval_s=health_interval_s,
        connect_timeout_s=connect_timeout_s,
        first_byte_timeout_s=first_byte_timeout_s,
        idle_timeout_s=idle_timeout_s,
        max_body_bytes=max_body_bytes,
        drain_timeout_s=drain_timeout,
        **energy.kwargs(),
    )
    plan = plan_gateway(config)  # every check that needs no network, before the port is taken
    sock = bind_socket(config.host, config.port)
    try:
        gw = Gateway(config, announce=note, plan=plan)
        try:
            signals = run_gateway(
                gw,
                sock,
                on_ready=lambda: _ready(address(sock) | gw.describe(), as_json),
                log_level=log_level,
                access_log=access_log,
            )
        finally:
            gw.close()
        summary = _summary(gw)
    finally:
        sock.close()
    if as_json:
        emit({"event": "stopped", **summary})
    else:
        out.print(
            f"stopped: {summary['requests']} requests; {summary['requests_j']:.1f} J to requests, "
            f"{summary['idle_j']:.1f} J idle; meters' total {summary['meter_total_j']:.1f} J ({summary['meter']}, "
            f"{summary['energy_source']})",
            markup=False,
            soft_wrap=True,
        )
    if signal.SIGINT in signals:
        raise typer.Exit(130)


def _ready(record: dict, as_json: bool) -> None:
    if as_json:
        emit({"event": "ready", "pid": os.getpid(), **record})
        return
    r = record
    lines = [
        f"gateway for {r['model']} at {r['url']}/v1"
        + (" (API key required)" if r["auth"] else "")
        + f"; routing: {r['routing']}",
    ]
    for u in r["upstreams"]:
        state = "up" if u["up"] else f"DOWN ({u['reason']})"
        lines.append(f"  upstream {u['name']}: {u['url']} serving {u['model'] or '?'}, {state}")
    for m in r["meters"]:
        lines.append(f"  energy of {m['name']}: {m['note']}; read every {m['interval_s']:g} s")
    lines.append(
        f"carbon {r['intensity_g_per_kwh']:g} gCO2e/kWh ({r['intensity_source']}), PUE {r['pue']:g}; every response's "
        f"usage carries energy_j and carbon_g; dashboard: {r['url']}/dashboard; SIGTERM or Ctrl-C stops it"
    )
    for line in lines:
        out.print(line, markup=False, soft_wrap=True)
    sys.stdout.flush()


def _summary(gw) -> dict:
    energy = gw.energy()
    keys = ("meter", "energy_source", "duration_s", "requests_j", "prefill_j", "decode_j", "idle_j", "pending_j",
            "meter_total_j", "invariant_gap_j", "invariant_gap_rel", "carbon_g")  # fmt: skip
    counts = gw.metrics.request_counts()
    return {"requests": sum(counts.values()), "finished": counts, **{k: energy[k] for k in keys}}
