"""`greenlm gateway`: OpenAI's API in front of servers you already run, with every request's energy and carbon
in its usage."""

from __future__ import annotations

import typer

from greenlm.cli import options, serving
from greenlm.cli.app import app
from greenlm.cli.common import note
from greenlm.gateway.config import GatewayConfig


def _flag(name: str, help: str):
    """The flag of GatewayConfig's field `name` (--name-with-dashes), with the field's default."""
    return typer.Option(options.default(GatewayConfig, name), "--" + name.replace("_", "-"), help=help)


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
    host: str = serving.HostOpt,
    port: int = serving.PortOpt,
    api_key: str | None = serving.ApiKeyOpt,
    served_model_name: str | None = typer.Option(
        None, "--served-model-name", help="The model id clients send (default: the first upstream's)."
    ),
    tokenizer: str | None = typer.Option(
        None,
        "--tokenizer",
        help="A tokenizer dir or .gguf to count tokens when an upstream reports no usage.",
    ),
    scrape_interval_s: float = _flag(
        "scrape_interval_s", "Seconds between readings of each upstream's meter."
    ),
    health_interval_s: float = _flag("health_interval_s", "Seconds between health checks of each upstream."),
    connect_timeout_s: float = _flag("connect_timeout_s", "Connecting to an upstream."),
    first_byte_timeout_s: float = _flag(
        "first_byte_timeout_s",
        "A stream's first event, or a whole non-streaming answer; past it, the next upstream.",
    ),
    idle_timeout_s: float = _flag(
        "idle_timeout_s", "Between two events of a stream; past it, an error event."
    ),
    energy: options.EnergyFlags = options.EnergyOpts,
    max_body_bytes: int = serving.MaxBodyOpt,
    drain_timeout: float = serving.DrainOpt,
    log_level: str = serving.LogLevelOpt,
    access_log: bool = serving.AccessLogOpt,
    as_json: bool = serving.JsonLinesOpt,
) -> None:
    """Relay OpenAI's API to upstream servers; every response's usage gains its energy and carbon."""
    from greenlm.gateway.gateway import Gateway
    from greenlm.gateway.http import run_gateway
    from greenlm.gateway.plan import plan_gateway

    serving.check_log_level(log_level)
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
        api_key=serving.api_key_or_env(api_key),
        served_model_name=served_model_name,
        tokenizer=tokenizer,
        scrape_interval_s=scrape_interval_s,
        health_interval_s=health_interval_s,
        connect_timeout_s=connect_timeout_s,
        first_byte_timeout_s=first_byte_timeout_s,
        idle_timeout_s=idle_timeout_s,
        max_body_bytes=max_body_bytes,
        drain_timeout_s=drain_timeout,
        energy=energy,
    )
    plan = plan_gateway(config)  # every check that needs no network, before the port is taken
    serving.listen_until_stopped(
        config.host,
        config.port,
        lambda: Gateway(config, announce=note, plan=plan),
        lambda gw, sock: run_gateway(
            gw,
            sock,
            on_ready=lambda: serving.ready(serving.address(sock) | gw.describe(), as_json, _ready_lines),
            log_level=log_level,
            access_log=access_log,
        ),
        lambda gw: gw.close(),
        _summary,
        as_json=as_json,
        stopped_line=lambda summary: (
            f"stopped: {summary['requests']} requests; {summary['requests_j']:.1f} J to requests, "
            f"{summary['idle_j']:.1f} J idle; meters' total {summary['meter_total_j']:.1f} J ({summary['meter']}, "
            f"{summary['energy_source']})"
        ),
    )


def _ready_lines(r: dict) -> list[str]:
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
    return lines


def _summary(gw) -> dict:
    energy = gw.energy()
    keys = ("meter", "energy_source", "duration_s", "requests_j", "prefill_j", "decode_j", "idle_j", "pending_j",
            "meter_total_j", "invariant_gap_j", "invariant_gap_rel", "carbon_g")  # fmt: skip
    counts = gw.metrics.request_counts()
    return {"requests": sum(counts.values()), "finished": counts, **{k: energy[k] for k in keys}}
