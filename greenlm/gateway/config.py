"""The gateway's settings, validated once (cheap checks only) so the CLI and library callers agree."""

from __future__ import annotations

from dataclasses import dataclass, field

from greenlm.energy.settings import EnergySettings, flat_dict
from greenlm.errors import GreenlmError
from greenlm.serve.config import (
    API_KEY_ENV,
    DEFAULT_HOST,
    DEFAULT_PORT,
    DRAIN_TIMEOUT_S,
    MAX_BODY_BYTES,
    check_front_end,
    check_max_kld,
    check_seconds,
    check_whole,
)

__all__ = ["API_KEY_ENV", "DEFAULT_PORT", "GatewayConfig"]


@dataclass
class GatewayConfig:
    # the upstreams: URLs (each with, in the same order, an API key's environment variable, an energy metric,
    # a pid; each list empty or one entry per upstream; a key variable given once serves every upstream) ...
    upstreams: list[str] = field(default_factory=list)
    upstream_key_envs: list[str] = field(default_factory=list)
    energy_metrics: list[str] = field(default_factory=list)
    upstream_pids: list[int] = field(default_factory=list)
    # ... or a policy file whose ladder names them, with the policies that choose among them
    policy: str | None = None
    max_kld: float | None = None  # the ladder's quality budget (overrides the policy file's)
    db: str | None = None  # the store the ladder's figures are read from and decisions written to
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT  # 0: any free port
    api_key: str | None = None
    served_model_name: str | None = None  # the id clients send; default: the first upstream's model
    tokenizer: str | None = None  # a tokenizer dir or GGUF to count tokens when an upstream reports none
    scrape_interval_s: float = 1.0  # how often each upstream's meter is read (a window each)
    health_interval_s: float = 5.0
    connect_timeout_s: float = 5.0
    first_byte_timeout_s: float = 120.0  # a streamed response's first chunk; a non-streaming one whole
    idle_timeout_s: float = 60.0  # between two chunks of a stream
    max_body_bytes: int = MAX_BODY_BYTES
    drain_timeout_s: float = DRAIN_TIMEOUT_S
    # the meter of upstreams on this host (auto, cpu-model: their process trees, rapl, nvml, a '+' join), the
    # cpu-model constants, the grid and PUE: as every metered verb takes them
    energy: EnergySettings = field(default_factory=EnergySettings)

    def __post_init__(self) -> None:
        self.upstreams = list(self.upstreams or [])
        self.upstream_key_envs = list(self.upstream_key_envs or [])
        self.energy_metrics = list(self.energy_metrics or [])
        self.upstream_pids = list(self.upstream_pids or [])
        if self.policy is None and not self.upstreams:
            raise GreenlmError(
                "no upstream: give --upstream URL (an OpenAI-compatible server, e.g. http://127.0.0.1:8080), or "
                "--policy FILE with a ladder of upstreams"
            )
        if self.policy is not None and self.upstreams:
            raise GreenlmError(
                "give the upstreams either with --upstream or in the --policy file's ladder, not both"
            )
        if self.policy is not None and (self.upstream_key_envs or self.energy_metrics or self.upstream_pids):
            raise GreenlmError(
                "with --policy, each ladder entry says its own key_env, energy_metric and pid: drop "
                "--upstream-key-env, --energy-metric and --upstream-pid"
            )
        n = len(self.upstreams)
        for flag, values, once_ok in (
            ("--upstream-key-env", self.upstream_key_envs, True),
            ("--energy-metric", self.energy_metrics, n == 1),
            ("--upstream-pid", self.upstream_pids, n == 1),
        ):
            if values and len(values) != n and not (len(values) == 1 and once_ok):
                raise GreenlmError(
                    f"{flag} is given {len(values)} times for {n} upstreams: give it once per --upstream, in the "
                    "same order" + (" (or once for all)" if flag == "--upstream-key-env" else "")
                )
        for pid in self.upstream_pids:
            check_whole("--upstream-pid", pid, 1)
        check_front_end(self)
        check_seconds("--scrape-interval-s", self.scrape_interval_s, 0.05, open_low=False)
        check_seconds("--health-interval-s", self.health_interval_s, 0.1, open_low=False)
        check_seconds("--connect-timeout-s", self.connect_timeout_s)
        check_seconds("--first-byte-timeout-s", self.first_byte_timeout_s)
        check_seconds("--idle-timeout-s", self.idle_timeout_s)
        self.energy = EnergySettings.coerce(self.energy)
        if self.max_kld is not None and self.policy is None:
            raise GreenlmError("--max-kld is the quality budget of a ladder: add --policy FILE")
        check_max_kld(self.max_kld)

    def to_dict(self) -> dict:
        d = flat_dict(self)
        d["api_key"] = "set" if self.api_key else None  # never echo a secret
        return d
