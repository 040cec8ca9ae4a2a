"""A deterministic stand-in for candidate evaluation, importable by Ray workers."""

import socket

COSTS = {
    "base": (0.5, 0.0),
    "q8_0": (0.2, 0.004),
    "q4_k_m": (0.12, 0.04),
    "q4_0": (0.1, 0.2),
    "q6_k": (0.25, 0.003),
}


def fake_work(candidate, front):
    name = candidate.quant_type or "base"
    cost, kld = COSTS[name]
    return {
        "key": candidate.key,
        "label": candidate.label,
        "recipe": list(candidate.recipe),
        "engine": candidate.engine,
        "quant_type": candidate.quant_type,
        "threads": candidate.threads,
        "status": "measured",
        "decode_j_per_token": cost,
        "decode_tokens_per_s": 1 / cost,
        "kld": kld,
        "ppl": 10 * (1 + kld),
        "ppl_increase_pct": kld * 50,
        "front_size_seen": len(front),
        "host": socket.gethostname(),
        "wall_s": 0.01,
        "model": "tiny",
        "meter": "cpu-model",
        "energy_source": "estimated",
        "text": "builtin:pydoc-topics/evaluation",
        "phase_j_per_token": {"prefill": cost / 10, "decode": cost},
        "execution": "real",
        "size_mb": 100 * cost,
    }
