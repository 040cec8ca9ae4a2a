"""Run a saved model the way it was chosen: the engine, threads, decoding and device `greenlm optimize --out`
recorded (models/run.py) fill whatever the user left unset; a flag the user gave always wins."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from greenlm.engines.names import DEFAULT_ENGINE
from greenlm.engines.speculative import SpeculativeConfig
from greenlm.io import noop
from greenlm.models.run import saved_run_settings
from greenlm.models.spec import ModelSpec


def apply_saved_run(config, spec: ModelSpec, announce: Callable[[str], None] = noop):
    """`config` (a dataclass with `engine`, `threads`, `device` and maybe `speculative`) completed from
    `spec`'s saved run settings: engine None, threads None, device "auto" and speculative None count as
    unset. Without saved settings the engine is the default one."""
    saved = saved_run_settings(spec)
    changes: dict = {}
    if saved is None:
        if config.engine is None:
            changes["engine"] = DEFAULT_ENGINE
        return dataclasses.replace(config, **changes) if changes else config
    if config.engine is None:
        changes["engine"] = saved.engine
    engine = changes.get("engine", config.engine)
    same_engine = engine == saved.engine  # threads and decoding were chosen for that engine only
    if same_engine and config.threads is None and saved.threads is not None:
        changes["threads"] = saved.threads
    if config.device == "auto" and saved.device:
        changes["device"] = saved.device
    if (
        same_engine
        and hasattr(config, "speculative")
        and config.speculative is None
        and saved.speculative is not None
        and getattr(config, "batch_size", 1) == 1
    ):
        changes["speculative"] = SpeculativeConfig(saved.speculative)
    if changes:
        said = ", ".join(
            f"{k} {v.kind if isinstance(v, SpeculativeConfig) else v}" for k, v in changes.items()
        )
        announce(f"{spec.name} runs as greenlm optimize chose it: {said} (flags override)")
    return dataclasses.replace(config, **changes)
