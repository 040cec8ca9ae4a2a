"""The server's settings, validated once (cheap checks only) so the CLI and library callers agree."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from greenlm.defer.batchfile import MAX_FILE_BYTES
from greenlm.defer.settings import DEFAULT_FLEX_MAX_WAIT_S, GridSettings
from greenlm.energy.settings import EnergySettings, flat_dict
from greenlm.engines.names import check_device, check_engine_name
from greenlm.errors import GreenlmError

SERVE_ENGINE = "llamacpp"  # serve's default for a model saved without run settings: it batches best
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
API_KEY_ENV = "GREENLM_API_KEY"
MAX_BODY_BYTES = 1 << 20  # request bodies beyond this get 413
DRAIN_TIMEOUT_S = 30.0  # SIGTERM: how long in-flight requests may take to finish


def check_whole(flag: str, value, low: int, high: int | None = None) -> None:
    """One line naming `flag` unless `value` is a whole number from `low` (to `high`)."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        bound = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise GreenlmError(f"{flag} must be a whole number {bound}, got {value!r}")


def check_seconds(flag: str, value, low: float = 0.0, *, open_low: bool = True) -> None:
    """One line naming `flag` unless `value` is a finite number of seconds above `low` (from `low`)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if open_low else value >= low)
    if not ok:
        raise GreenlmError(
            f"{flag} must be a number of seconds {'above' if open_low else 'from'} {low:g}, got {value!r}"
        )


def check_front_end(config) -> None:
    """The HTTP settings greenlm serve and greenlm gateway share (`config`: a ServeConfig or GatewayConfig):
    where to bind, the key, the model id clients send, the body limit and the drain time-out."""
    check_whole("--port", config.port, 0, 65535)
    check_whole("--max-body-bytes", config.max_body_bytes, 1024)
    if not isinstance(config.host, str) or not config.host.strip():
        raise GreenlmError("--host must be an address to bind, e.g. 127.0.0.1 or 0.0.0.0")
    if config.api_key is not None and not config.api_key.strip():
        raise GreenlmError(f"--api-key (or ${API_KEY_ENV}) is empty: give a key or leave it unset")
    if config.served_model_name is not None and not config.served_model_name.strip():
        raise GreenlmError("--served-model-name is empty")
    drain = config.drain_timeout_s
    if (
        not (isinstance(drain, (int, float)) and not isinstance(drain, bool) and math.isfinite(drain))
        or drain < 0
    ):
        raise GreenlmError(f"--drain-timeout must be a number of seconds >= 0, got {drain!r}")


def check_max_kld(max_kld) -> None:
    if max_kld is not None and not (
        isinstance(max_kld, (int, float)) and math.isfinite(max_kld) and 0 <= max_kld <= 10
    ):
        raise GreenlmError(f"--max-kld must be a KL divergence from 0 to 10 (e.g. 0.05), got {max_kld!r}")


@dataclass
class ServeConfig:
    model: str | None = (
        None  # built-in name, .gguf, HF or variant directory, or a dir saved by optimize --out
    )
    engine: str | None = None  # None: as `optimize --out` saved it (engines/saved.py), else llamacpp
    threads: int | None = None  # None: the saved setting, else the engine's default
    device: str = "auto"  # auto: a GPU when the engine can use one here, else the CPU
    dtype: str = "float32"  # transformers weights, or the float GGUF an HF model is exported to for llama.cpp
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT  # 0: any free port (the startup record says which)
    max_batch: int = 8  # slots: requests decoded together
    max_queue: int = 64  # requests waiting for a slot before 429
    max_tokens_default: int = 256  # when a request gives no max_tokens (capped by the context left)
    step_tokens: int = 256  # tokens per engine step: decode tokens plus prompt chunks
    prefix_cache: bool = True  # keep finished requests' KV cells for prompts that share a prefix (llama.cpp)
    # prompt tokens a step may carry while other requests decode (None: up to step_tokens); steps with no
    # request decoding take prompt tokens up to step_tokens
    prefill_chunk_tokens: int | None = None
    context_tokens: int = 2048  # per request (prompt + output), capped by the model's trained context
    api_key: str | None = None
    served_model_name: str | None = None  # the id clients send as "model"; default the model's name
    energy: EnergySettings = field(default_factory=EnergySettings)  # meter, cpu-model constants, grid, PUE
    max_body_bytes: int = MAX_BODY_BYTES
    drain_timeout_s: float = DRAIN_TIMEOUT_S
    # an adaptive server (serve/policy_file.py): a variant ladder and the policies that move along it
    policy: str | None = None  # a policy YAML file
    ladder_from_search: str | None = None  # "latest" or an optimize search id: its Pareto front is the ladder
    max_kld: float | None = None  # the token-weighted quality budget (overrides the policy file's)
    db: str | None = None  # the results store the ladder is read from and decisions are written to
    # work that can wait (greenlm.defer): the grid it follows and its forecast, flex requests, Batch API files
    grid_csv: str | None = (
        None  # a CSV of (timestamp, g/kWh) replayed at replay_speed trace seconds per second
    )
    replay_speed: float = 1.0
    replay_from: str | None = None  # where in the CSV the replay starts (default: its first row)
    grid_provider: str | None = None  # electricitymaps:ZONE or watttime:REGION (tokens from the environment)
    forecast: str = "auto"  # a CSV: yesterday (auto), persistence or perfect; a provider: its own
    grid_url: str | None = None  # a provider's API base (a proxy, or a test's local server)
    flex_max_wait_s: float = DEFAULT_FLEX_MAX_WAIT_S  # grid-clock seconds a flex request may wait
    state_dir: str | None = None  # files, batches and finished lines (default: beside the results store)
    batch_max_file_bytes: int = MAX_FILE_BYTES  # a larger batch input file gets 400 (413 at the HTTP limit)

    def grid_settings(self) -> GridSettings:
        return GridSettings(
            csv=self.grid_csv, speed=self.replay_speed, replay_from=self.replay_from, provider=self.grid_provider,
            forecast=self.forecast, url=self.grid_url,
        )  # fmt: skip

    def __post_init__(self) -> None:
        if self.engine is not None:
            check_engine_name(self.engine)
        check_device(self.device)
        if self.threads is not None:
            check_whole("--threads", self.threads, 1)
        check_front_end(self)
        check_whole("--max-batch", self.max_batch, 1, 256)
        check_whole("--max-queue", self.max_queue, 0)
        check_whole("--max-tokens-default", self.max_tokens_default, 1)
        check_whole("--step-tokens", self.step_tokens, 1)
        if self.prefill_chunk_tokens is not None:
            check_whole("--prefill-chunk", self.prefill_chunk_tokens, 1)
        check_whole("--context", self.context_tokens, 16)
        if self.step_tokens < self.max_batch:
            raise GreenlmError(
                f"--step-tokens ({self.step_tokens}) must be at least --max-batch ({self.max_batch}): every "
                "running request decodes one token per step"
            )
        self.energy = EnergySettings.coerce(self.energy)  # a dict too: Ray sends the config as one
        check_max_kld(self.max_kld)
        if self.max_kld is not None and self.policy is None and self.ladder_from_search is None:
            raise GreenlmError(
                "--max-kld is the quality budget of a variant ladder: add --ladder-from-search latest or --policy FILE"
            )
        if self.ladder_from_search is not None and not str(self.ladder_from_search).strip():
            raise GreenlmError("--ladder-from-search is empty: give 'latest' or a search id")
        self.grid_settings()  # checks the grid flags
        if not (isinstance(self.flex_max_wait_s, (int, float)) and math.isfinite(self.flex_max_wait_s)) or (
            self.flex_max_wait_s < 0
        ):
            raise GreenlmError(f"--flex-max-wait must be a duration >= 0, got {self.flex_max_wait_s!r}")
        check_whole("--batch-max-file-bytes", self.batch_max_file_bytes, 1024)

    def to_dict(self) -> dict:
        d = flat_dict(self)
        d["api_key"] = "set" if self.api_key else None  # never echo a secret
        return d
