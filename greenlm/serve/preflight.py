"""Every check that takes a moment before a server starts (grid, PUE, policy file, ladder, model paths, saved
run settings, meter, engine installed, files readable), so a mistake fails before the port is bound or a
model loads; and what those checks settle: the ladder of variants served and the grid it follows (opened by
greenlm.defer.grid: a replayed CSV, a live provider, or the fixed figure)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from greenlm.defer.grid import open_grid
from greenlm.defer.settings import GridSettings
from greenlm.energy.carbon import GridIntensity
from greenlm.engines.available import check_engine_ready
from greenlm.engines.saved import apply_saved_run
from greenlm.errors import GreenlmError
from greenlm.io import noop
from greenlm.models.run import RunSettings, saved_run_settings
from greenlm.models.spec import ModelSpec, resolve_model
from greenlm.serve.config import SERVE_ENGINE, ServeConfig
from greenlm.serve.ladder import Ladder, Variant, ladder_from_search
from greenlm.serve.policies import start_variant
from greenlm.serve.policy_file import PolicyConfig, load_policy, with_budget
from greenlm.store import Store


@dataclass(frozen=True)
class Preflight:
    """What the cheap checks settled: everything but loading the model."""

    config: ServeConfig  # engine, threads and device filled in from the saved run settings, if any
    intensity: GridIntensity
    pue: float
    spec: ModelSpec  # the start variant's
    saved: RunSettings | None
    ladder: Ladder
    start: Variant
    specs: dict[str, ModelSpec]  # each variant's resolved model
    policy: PolicyConfig | None = None  # None: a plain server (one model, nothing decided)
    model_name: str | None = None  # what the ladder is a ladder of (a search's model)
    grid: GridSettings = GridSettings()  # the grid the server follows (flags, or the policy's grid section)


def grid_settings(config: ServeConfig, policy: PolicyConfig | None) -> GridSettings:
    """The grid the server follows: --grid-csv / --grid, or a policy file's grid section (not both)."""
    flags = config.grid_settings()
    section = policy.grid if policy is not None else None
    if section is None:
        return flags
    if flags.active:
        raise GreenlmError(
            "the grid is given twice, by --grid-csv/--grid and in the policy file's grid section: keep one"
        )
    if section.csv is not None:
        return GridSettings(csv=section.csv, speed=section.speed, loop=section.loop, forecast=config.forecast)
    base = section.url.removesuffix("/carbon-intensity/latest") if section.url else None
    return GridSettings(provider=f"electricitymaps:{section.zone}", url=base, forecast=config.forecast)


def check_grid(settings: GridSettings, intensity: GridIntensity) -> None:
    """Read a CSV, find a provider's token: fail before the port is bound."""
    open_grid(settings, intensity).close()


def _policy(config: ServeConfig) -> PolicyConfig:
    policy = load_policy(config.policy) if config.policy else PolicyConfig(source="flags")
    if config.ladder_from_search is not None:
        policy = policy.model_copy(
            update={"ladder": (), "ladder_from_search": config.ladder_from_search.strip()}
        )
    rungs = 2 if policy.ladder_from_search else len(policy.ladder)  # a search's front: a ladder of several
    return with_budget(policy, config.max_kld, rungs)


def _ladder(policy: PolicyConfig, config: ServeConfig) -> Ladder:
    if policy.ladder_from_search:
        with Store(config.db) as store:
            return ladder_from_search(store, policy.ladder_from_search)
    if not policy.ladder:  # no ladder in the file: the model of the flags is the one variant
        return Ladder(
            [
                Variant(
                    name="model",
                    model=config.model,
                    engine=config.engine or SERVE_ENGINE,
                    threads=config.threads,
                    source="--model",
                )
            ]
        )
    where = f"given in policy {policy.source}"
    return Ladder(
        [
            Variant(
                name=e.name, model=e.model, engine=e.engine, threads=e.threads, kld=e.kld,
                decode_j_per_token=e.decode_j_per_token, decode_tokens_per_s=e.decode_tokens_per_s,
                source=where if e.kld is not None or e.decode_j_per_token is not None else "no figures given",
            )
            for e in policy.ladder
        ]
    )  # fmt: skip


def preflight(config: ServeConfig, announce: Callable[[str], None] = noop) -> Preflight:
    """Every check that takes a moment (grid, PUE, policy file, ladder, model paths, saved run settings, meter,
    engine installed, files readable), so a mistake fails before the port is bound or a model loads. A model
    `optimize --out` saved runs on the engine, threads and device it was chosen with unless a flag says
    otherwise; a model saved without them runs on llama.cpp."""
    carbon = config.energy.carbon()
    intensity, pue = carbon.grid, carbon.pue
    if config.policy is None and config.ladder_from_search is None:
        return _plain(config, intensity, pue, announce)
    return _adaptive(config, intensity, pue)


def _plain(
    config: ServeConfig, intensity: GridIntensity, pue: float, announce: Callable[[str], None]
) -> Preflight:
    """One model served as given: a ladder of one variant, nothing decided."""
    spec = resolve_model(config.model)
    saved = saved_run_settings(spec)
    if config.engine is None and saved is None:
        config = dataclasses.replace(config, engine=SERVE_ENGINE)  # serve's default: it batches best
    config = apply_saved_run(config, spec, announce)  # flags win; threads only for the chosen engine
    if saved and saved.speculative and config.engine == saved.engine:
        announce(
            f"note: {spec.name} was chosen with {saved.speculative} speculative decoding; the server batches "
            "plain greedy decoding instead (the same output, at the speed and energy of batching)"
        )
    grid = grid_settings(config, None)
    check_grid(grid, intensity)
    config.energy.open_meter().close()  # a meter this machine lacks fails here
    check_engine_ready(config.engine, spec)  # the slowest check (reads a GGUF's tensor headers): last
    name = config.served_model_name or spec.name
    variant = Variant(
        name=name,
        model=config.model,
        engine=config.engine,
        threads=config.threads,
        source="the model served as given (no ladder)",
    )
    return Preflight(config, intensity, pue, spec, saved, Ladder([variant]), variant, {name: spec}, grid=grid)


def _adaptive(config: ServeConfig, intensity: GridIntensity, pue: float) -> Preflight:
    """A ladder of variants of one model and the policies that move along it."""
    policy = _policy(config)
    ladder = _ladder(policy, config)
    start = start_variant(policy, ladder)
    grid = grid_settings(config, policy)
    check_grid(grid, intensity)  # reads and checks a CSV, or the provider's token
    config.energy.open_meter().close()
    specs: dict[str, ModelSpec] = {}
    for v in ladder:
        try:
            specs[v.name] = resolve_model(v.model)
            check_engine_ready(v.engine, specs[v.name])
        except GreenlmError as exc:
            raise GreenlmError(f"ladder variant '{v.name}': {exc}") from None
    spec = specs[start.name]
    return Preflight(
        config, intensity, pue, spec, None, ladder, start, specs, policy, ladder.model_name, grid
    )
