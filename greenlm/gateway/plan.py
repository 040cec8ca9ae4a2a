"""Every check that needs no network (URLs, flags, the policy file, metric specs, API keys in the environment,
the tokenizer, the grid), so a mistake is one line before the port is bound; and what they settle: the ladder
of upstreams and the routing policy."""

from __future__ import annotations

from dataclasses import dataclass

from greenlm.energy.carbon import CarbonRate
from greenlm.errors import GreenlmError
from greenlm.gateway.config import GatewayConfig
from greenlm.gateway.energy_metric import MetricSpec, parse_metric_spec
from greenlm.gateway.policy import load_gateway_policy
from greenlm.gateway.tokens import TokenCounter
from greenlm.gateway.upstream import UpstreamSpec, base_url, read_key
from greenlm.grid.signal import grid_signal
from greenlm.serve.ladder import Ladder, Variant
from greenlm.serve.policy_file import PolicyConfig


@dataclass(frozen=True)
class GatewayPlan:
    config: GatewayConfig
    specs: list[UpstreamSpec]  # as given (the ladder orders them cheapest first)
    keys: dict[str, str | None]  # upstream name -> its API key (never shown)
    metrics: dict[str, MetricSpec]  # upstream name -> its energy metric, for upstreams on another host
    ladder: Ladder
    policy: (
        PolicyConfig | None
    )  # None: no policy file; requests go to the up upstream with the fewest in flight
    carbon: CarbonRate  # the grid intensity the flags resolved (a policy's grid section moves it) and the PUE
    tokens: TokenCounter | None


def _name(url: str, taken: set[str]) -> str:
    """An upstream's name from its URL: host:port (a suffix when two are the same)."""
    name = url.split("://", 1)[1].split("/", 1)[0]
    base, i = name, 2
    while name in taken:
        name, i = f"{base}-{i}", i + 1
    taken.add(name)
    return name


def _from_flags(config: GatewayConfig) -> list[UpstreamSpec]:
    specs, taken = [], set()
    n = len(config.upstreams)

    def nth(values: list, i: int):
        return values[i] if len(values) == n else (values[0] if values else None)

    for i, url in enumerate(config.upstreams):
        base = base_url(url)
        specs.append(
            UpstreamSpec(
                name=_name(base, taken),
                url=base,
                key_env=nth(config.upstream_key_envs, i),
                energy_metric=nth(config.energy_metrics, i),
                pid=nth(config.upstream_pids, i),
                source="no figures (given by --upstream)",
            )
        )
    urls = [s.url for s in specs]
    dup = next((u for u in urls if urls.count(u) > 1), None)
    if dup:
        raise GreenlmError(f"--upstream {dup} is given twice: give each upstream once")
    return specs


def plan_gateway(config: GatewayConfig) -> GatewayPlan:
    carbon = (
        config.energy.carbon()
    )  # the meter's name, the watts, the grid and PUE were checked by the config
    if config.policy is not None:
        policy, specs = load_gateway_policy(config.policy, config.db, config.max_kld)
        grid_signal(policy.grid, carbon.grid).close()  # reads and checks a CSV, or the provider's token
    else:
        policy, specs = None, _from_flags(config)
    keys = {s.name: read_key(s.key_env, s.name) for s in specs}
    metrics = {s.name: parse_metric_spec(s.energy_metric) for s in specs if s.energy_metric}
    tokens = TokenCounter(config.tokenizer) if config.tokenizer else None
    ladder = Ladder(
        [
            Variant(
                name=s.name, model=s.url, engine="upstream", kld=s.kld, decode_j_per_token=s.decode_j_per_token,
                decode_tokens_per_s=s.decode_tokens_per_s, source=s.source,
            )
            for s in specs
        ]
    )  # fmt: skip
    return GatewayPlan(config, specs, keys, metrics, ladder, policy, carbon, tokens)
