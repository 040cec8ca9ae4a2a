"""The gateway's settings, validated once (cheap checks only) so the CLI and library callers agree."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from greenlm.errors import GreenlmError
from greenlm.serve.config import DEFAULT_HOST

DEFAULT_PORT = 8000
API_KEY_ENV = "GREENLM_API_KEY"


def _seconds(flag: str, value, low: float = 0.0, *, open_low: bool = True) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if open_low else value >= low)
    if not ok:
        raise GreenlmError(
            f"{flag} must be a number of seconds {'above' if open_low else 'from'} {low:g}, got {value!r}"
        )


def _whole(flag: str, value, low: int, high: int | None = None) -> None:
    ok = (
        isinstance(value, int)
        and not isinstance(value, bool)
        and value >= low
        and (high is None or value <= high)
    )
    if not ok:
        bound = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise GreenlmError(f"{flag} must be a whole number {bound}, got {value!r}")


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
    max_body_bytes: int = 1 << 20
    drain_timeout_s: float = 30.0
    # energy and carbon (a plain group, as every metered verb takes them)
    meter: str = (
        "auto"  # upstreams on this host: auto, cpu-model (their process trees), rapl, nvml, a '+' join
    )
    watts_per_core: float | None = None
    idle_watts_per_core: float | None = None
    country: str | None = None
    region: str | None = None
    carbon_intensity: float | None = None
    pue: float = 1.0

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
            _whole("--upstream-pid", pid, 1)
        _whole("--port", self.port, 0, 65535)
        _whole("--max-body-bytes", self.max_body_bytes, 1024)
        _seconds("--scrape-interval-s", self.scrape_interval_s, 0.05, open_low=False)
        _seconds("--health-interval-s", self.health_interval_s, 0.1, open_low=False)
        _seconds("--connect-timeout-s", self.connect_timeout_s)
        _seconds("--first-byte-timeout-s", self.first_byte_timeout_s)
        _seconds("--idle-timeout-s", self.idle_timeout_s)
        _seconds("--drain-timeout", self.drain_timeout_s, open_low=False)
        if not isinstance(self.host, str) or not self.host.strip():
            raise GreenlmError("--host must be an address to bind, e.g. 127.0.0.1 or 0.0.0.0")
        if self.api_key is not None and not self.api_key.strip():
            raise GreenlmError(f"--api-key (or ${API_KEY_ENV}) is empty: give a key or leave it unset")
        if self.served_model_name is not None and not self.served_model_name.strip():
            raise GreenlmError("--served-model-name is empty")
        if self.max_kld is not None and self.policy is None:
            raise GreenlmError("--max-kld is the quality budget of a ladder: add --policy FILE")
        if self.max_kld is not None and not (
            isinstance(self.max_kld, (int, float)) and math.isfinite(self.max_kld) and 0 <= self.max_kld <= 10
        ):
            raise GreenlmError(
                f"--max-kld must be a KL divergence from 0 to 10 (e.g. 0.05), got {self.max_kld!r}"
            )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["api_key"] = "set" if self.api_key else None  # never echo a secret
        return d
