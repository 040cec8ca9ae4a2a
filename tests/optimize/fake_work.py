"""A deterministic stand-in for candidate evaluation, importable by Ray workers."""

import socket

from greenlm.optimize.row import CandidateRow

COSTS = {
    "base": (0.5, 0.0),
    "as-is": (0.15, 0.003),  # the model as given (a GGUF) on llama.cpp
    "q8_0": (0.2, 0.004),
    "q4_k_m": (0.12, 0.04),
    "q4_0": (0.1, 0.2),
    "q6_k": (0.25, 0.003),
}


def fake_work(candidate, front, **figures):
    """A measured row with made-up figures (`figures` adds or replaces some: model_path, training_energy_j)."""
    name = candidate.quant_type or ("as-is" if candidate.engine == "llamacpp" else "base")
    cost, kld = COSTS[name]
    return CandidateRow.from_dict(
        {
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
            "front_size_seen": None if front is None else len(front),
            "host": socket.gethostname(),
            "wall_s": 0.01,
            "model": "tiny",
            "meter": "cpu-model",
            "energy_source": "estimated",
            "text": "builtin:pydoc-topics/evaluation",
            "phase_j_per_token": {"prefill": cost / 10, "decode": cost},
            "execution": "real",
            "size_mb": 100 * cost,
            **figures,
        }
    )


def fake_final(settings, rows, rounds, progress=None, swap=()):
    """Final-round figures without measuring: each row's search-time cost, except the keys in `swap`, whose
    costs trade places (what a quiet re-measurement does to two close candidates)."""
    costs = {r.key: r.decode_j_per_token for r in rows}
    if swap:
        a, b = swap
        costs[a], costs[b] = costs[b], costs[a]
    return {
        key: {
            "decode_j_per_token": cost,
            "spread": {"min": cost * 0.99, "max": cost * 1.01},
            "per_round": [cost] * rounds,
            "decode_tokens_per_s": 1 / cost,
            "carbon_g_per_1k_tokens": cost,
            "meter": "cpu-model",
            "energy_source": "estimated",
            "host": socket.gethostname(),
            "rounds": rounds,
        }
        for key, cost in costs.items()
    }
