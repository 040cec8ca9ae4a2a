"""A response's `usage` as the gateway answers it: the upstream's token counts (or the gateway's own, said
so), and the energy fields greenlm serve gives, from the gateway's split of the upstream's meter."""

from __future__ import annotations

from dataclasses import dataclass

from greenlm.gateway.ledger import Charge

# what an upstream's own usage may carry that the gateway's figures replace (greenlm serve's): kept apart
UPSTREAM_ENERGY_KEYS = (
    "energy_j", "prefill_energy_j", "decode_energy_j", "carbon_g", "meter", "energy_source", "variant", "replica",
)  # fmt: skip


@dataclass(frozen=True)
class Counts:
    prompt_tokens: int
    completion_tokens: int
    how: str | None = None  # None: the upstream's usage; else how the gateway counted
    cached_tokens: int = 0  # of the prompt, from the upstream's prefix cache (its prompt_tokens_details)


def cached_tokens(usage: dict) -> int:
    """`prompt_tokens_details.cached_tokens` of an upstream's usage (OpenAI's, vLLM's, greenlm serve's), else 0."""
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return cached if isinstance(cached, int) and not isinstance(cached, bool) and cached > 0 else 0


def gateway_usage(
    upstream_usage: dict | None,
    counts: Counts,
    charge: Charge | None,
    *,
    meter: str,
    energy_source: str,
    upstream: str,
    energy_note: str | None = None,
) -> dict:
    usage = dict(upstream_usage or {})
    own = {k: usage.pop(k) for k in UPSTREAM_ENERGY_KEYS if k in usage}
    usage["prompt_tokens"] = counts.prompt_tokens
    usage["completion_tokens"] = counts.completion_tokens
    usage["total_tokens"] = counts.prompt_tokens + counts.completion_tokens
    if charge is not None:
        usage.update(
            energy_j=charge.energy_j,
            prefill_energy_j=charge.prefill_j,
            decode_energy_j=charge.decode_j,
            carbon_g=charge.carbon_g,
        )
    else:
        usage.update(energy_j=None, prefill_energy_j=None, decode_energy_j=None, carbon_g=None)
        usage["energy_note"] = energy_note or "the meter did not answer in time: this request is booked later"
    usage.update(meter=meter, energy_source=energy_source, upstream=upstream)
    if counts.how is not None:
        usage["token_counts"] = counts.how
    if own:
        usage["upstream_energy"] = own  # the upstream's own figures (greenlm serve measures from inside)
    return usage
