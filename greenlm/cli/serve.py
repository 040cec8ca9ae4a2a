"""`greenlm serve`: an OpenAI-compatible server whose every response says what it cost in joules and CO2e."""

from __future__ import annotations

import sys

import typer

from greenlm.cli import options, serving
from greenlm.cli.app import app
from greenlm.cli.common import note, out
from greenlm.defer.settings import parse_duration_s
from greenlm.serve.config import ServeConfig


def _d(name: str):
    return options.default(ServeConfig, name)


@app.command()
@options.energy_options
def serve(
    model: str | None = typer.Option(
        None,
        "--model",
        "-m",
        help="Built-in name, .gguf, HF or variant directory, or a directory saved by `optimize --out`.",
    ),
    engine: str | None = typer.Option(
        None,
        "--engine",
        help="llamacpp or transformers (default: as `optimize --out` saved it, else llamacpp).",
    ),
    threads: int | None = typer.Option(
        None, "--threads", help="CPU threads (default: as saved, else the cores available)."
    ),
    device: options.DeviceFlag = _d("device"),
    host: str = serving.HostOpt,
    port: int = serving.PortOpt,
    max_batch: int = typer.Option(_d("max_batch"), "--max-batch", help="Requests decoded together (slots)."),
    max_queue: int = typer.Option(
        _d("max_queue"), "--max-queue", help="Requests waiting for a slot; beyond that, 429."
    ),
    max_tokens_default: int = typer.Option(
        _d("max_tokens_default"), "--max-tokens-default", help="max_tokens when a request gives none."
    ),
    step_tokens: int = typer.Option(
        _d("step_tokens"), "--step-tokens", help="Tokens per engine step (decode tokens + prompt chunks)."
    ),
    prefill_chunk: int | None = typer.Option(
        None,
        "--prefill-chunk",
        help="Prompt tokens a step carries while other requests decode (default: up to --step-tokens).",
    ),
    prefix_cache: bool = typer.Option(
        _d("prefix_cache"),
        "--prefix-cache/--no-prefix-cache",
        help="Reuse the KV cells of earlier requests for prompts that share a prefix (llama.cpp engine).",
    ),
    context: int = typer.Option(
        _d("context_tokens"), "--context", help="Tokens per request, prompt and output (capped by the model)."
    ),
    api_key: str | None = serving.ApiKeyOpt,
    served_model_name: str | None = typer.Option(
        None, "--served-model-name", help="The model id clients send (default: the model's name)."
    ),
    energy: options.EnergyFlags = options.EnergyOpts,
    max_body_bytes: int = serving.MaxBodyOpt,
    drain_timeout: float = serving.DrainOpt,
    policy: str | None = typer.Option(
        None,
        "--policy",
        help="Adaptive serving: a policy YAML (variant ladder, quality budget, load, carbon and idle policies).",
    ),
    ladder_from_search: str | None = typer.Option(
        None,
        "--ladder-from-search",
        help="Serve the Pareto front of an optimize search as a variant ladder: 'latest' or a search id.",
    ),
    max_kld: float | None = typer.Option(
        None, "--max-kld", help="Quality budget of a ladder: token-weighted mean KLD of what is served."
    ),
    db: str | None = options.DbOpt,
    grid_csv: str | None = options.GridCsvOpt,
    replay_speed: float = options.ReplaySpeedOpt,
    replay_from: str | None = options.ReplayFromOpt,
    grid: str | None = options.GridOpt,
    forecast: str = options.ForecastOpt,
    grid_url: str | None = options.GridUrlOpt,
    flex_max_wait: str = typer.Option(
        "10m",
        "--flex-max-wait",
        help="How long (grid clock) a service_tier=flex request may wait: 10m, 1h, 0.",
    ),
    state_dir: str | None = options.StateDirOpt,
    batch_max_file_bytes: int = typer.Option(
        _d("batch_max_file_bytes"), "--batch-max-file-bytes", help="Larger Batch API input files are refused."
    ),
    ray: bool = typer.Option(False, "--ray", help="Deploy the app on Ray Serve (replicas autoscale)."),
    ray_address: str | None = typer.Option(
        None, "--ray-address", help="Join this Ray cluster (default: start a local one)."
    ),
    min_replicas: int = typer.Option(1, "--min-replicas", help="Ray Serve: fewest replicas."),
    max_replicas: int = typer.Option(4, "--max-replicas", help="Ray Serve: most replicas."),
    target_ongoing: float = typer.Option(
        2.0, "--target-ongoing-requests", help="Ray Serve: requests per replica the autoscaler aims for."
    ),
    upscale_delay: float = typer.Option(
        3.0, "--upscale-delay", help="Ray Serve: seconds over target before adding a replica."
    ),
    downscale_delay: float = typer.Option(
        30.0, "--downscale-delay", help="Ray Serve: seconds under target before removing one."
    ),
    replica_cpus: float = typer.Option(
        1.0, "--replica-cpus", help="Ray Serve: CPUs each replica asks Ray for."
    ),
    ray_high_carbon: float | None = typer.Option(
        None,
        "--ray-high-carbon",
        help="Ray Serve: at or above this grid g/kWh, pack twice the requests per replica.",
    ),
    log_level: str = serving.LogLevelOpt,
    access_log: bool = serving.AccessLogOpt,
    as_json: bool = serving.JsonLinesOpt,
) -> None:
    """Serve a model with OpenAI's API; every response carries its energy and carbon in `usage`."""
    from greenlm.serve.http import run_http
    from greenlm.serve.preflight import preflight
    from greenlm.serve.server import Server

    serving.check_log_level(log_level)
    config = ServeConfig(
        model=model,
        engine=engine,
        threads=threads,
        device=device,
        host=host,
        port=port,
        max_batch=max_batch,
        max_queue=max_queue,
        max_tokens_default=max_tokens_default,
        step_tokens=step_tokens,
        prefix_cache=prefix_cache,
        prefill_chunk_tokens=prefill_chunk,
        context_tokens=context,
        api_key=serving.api_key_or_env(api_key),
        served_model_name=served_model_name,
        energy=energy,
        max_body_bytes=max_body_bytes,
        drain_timeout_s=drain_timeout,
        policy=policy,
        ladder_from_search=ladder_from_search,
        max_kld=max_kld,
        db=db,
        grid_csv=grid_csv,
        replay_speed=replay_speed,
        replay_from=replay_from,
        grid_provider=grid,
        forecast=forecast,
        grid_url=grid_url,
        flex_max_wait_s=0.0
        if flex_max_wait.strip() in ("0", "0s")
        else parse_duration_s(flex_max_wait, "--flex-max-wait"),
        state_dir=state_dir,
        batch_max_file_bytes=batch_max_file_bytes,
    )
    if ray:
        from greenlm.serve.ray_deploy import RayOptions, run_ray

        options = RayOptions(
            ray_address, min_replicas, max_replicas, target_ongoing, upscale_delay, downscale_delay, replica_cpus,
            ray_high_carbon,
        )  # fmt: skip
        code = run_ray(
            config, options, as_json=as_json, announce=note, emit=serving.emit if as_json else _ray_line
        )
        if code:
            raise typer.Exit(code)
        return
    checked = preflight(config, note)  # every cheap check before the port is taken or the model loads
    serving.listen_until_stopped(
        config.host,
        config.port,
        lambda: Server(config, announce=note, checked=checked),
        lambda server, sock: run_http(
            server,
            sock,
            on_ready=lambda: serving.ready(
                serving.address(sock) | server.describe(), as_json, lambda r: _ready_lines(r, config)
            ),
            log_level=log_level,
            access_log=access_log,
        ),
        lambda server: server.close(drain_timeout_s=config.drain_timeout_s),
        _summary,
        as_json=as_json,
        stopped_line=lambda summary: (
            f"stopped: {summary['requests']} requests; {summary['requests_j']:.1f} J to requests, "
            f"{summary['idle_j']:.1f} J idle; meter total {summary['meter_total_j']:.1f} J "
            f"({summary['meter']}, {summary['energy_source']})"
        ),
    )


def _ray_line(record: dict) -> None:
    if record["event"] == "ready":
        r = record["ray"]
        line = (
            f"serving on Ray Serve at {record['url']}/v1: {record['replicas']} replica(s) now, "
            f"{r['min_replicas']} to {r['max_replicas']} at {r['target_ongoing_requests']:g} ongoing requests each; "
            f"/metrics and /energy cover every replica; SIGTERM or Ctrl-C stops it"
        )
    else:
        line = (
            f"stopped: {record.get('requests_j', 0):.1f} J to requests, {record.get('idle_j', 0):.1f} J idle over "
            f"{len(record.get('replicas') or {})} replica(s)"
        )
    out.print(line, markup=False, soft_wrap=True)
    sys.stdout.flush()


def _ready_lines(r: dict, config: ServeConfig) -> list[str]:
    source = "ESTIMATED by a model" if r["energy_source"] == "estimated" else "measured by hardware counters"
    lines = [
        f"serving {r['model']} on {r['engine']} ({r['device']}, {r['threads']} threads, {r['max_batch']} slots) "
        f"at {r['url']}/v1" + (" (API key required)" if r["auth"] else ""),
        f"energy: meter {r['meter']} ({source}); carbon {r['intensity_g_per_kwh']:g} gCO2e/kWh "
        f"({r['intensity_source']}), PUE {r['pue']:g}; every response's usage carries energy_j and carbon_g",
        f"SIGTERM or Ctrl-C: in-flight requests finish (up to {config.drain_timeout_s:g} s), then it stops",
        f"dashboard: {r['url']}/dashboard",
        _defer_line(r),
    ]
    for v in r.get("ladder") or []:
        figures = ", ".join(f"{k} {v[k]:.4g}" for k in ("kld", "decode_j_per_token") if v.get(k) is not None)
        where = "inside" if v["inside_budget"] else "OUTSIDE"
        mark = "*" if v["active"] else " "
        lines.append(
            f" {mark} {v['name']}: {v['engine']}, {figures or 'no figures'} ({where} the budget; {v['source']})"
        )
    return lines


def _defer_line(r: dict) -> str:
    d = r["defer"]
    grid = d["grid"]
    where = (
        f"grid {grid['csv']} replayed at {grid['speed']:g}x, forecast: {grid['forecast']['source']}"
        if grid.get("csv")
        else f"grid {grid['provider']}, forecast: {grid['forecast'].get('kind')}"
        if grid.get("provider")
        else "a fixed grid figure (no forecast: deferred work runs as capacity allows)"
    )
    return (
        f"deferred work (/v1/batches, service_tier=flex up to {d['flex_max_wait_s']:g} s): {where}; "
        f"state in {d['state_dir']}"
    )


def _summary(server) -> dict:
    energy = server.energy()
    counts = server.metrics.request_counts()
    keys = (
        "meter",
        "energy_source",
        "duration_s",
        "requests_j",
        "prefill_j",
        "decode_j",
        "idle_j",
        "meter_total_j",
        "invariant_gap_j",
        "invariant_gap_rel",
        "carbon_g",
    )
    summary = {"requests": sum(counts.values()), "finished": counts, **{k: energy[k] for k in keys}}
    if server.adaptive:
        summary.update(
            load_j=energy["load_j"],
            decisions=server.controller.decision_count,
            tokens_by_variant=dict(server.controller.variant_tokens),
            mean_kld_served=server.controller.quality.life_mean(),
            reloads=energy.get("reloads", []),
        )
    return summary
