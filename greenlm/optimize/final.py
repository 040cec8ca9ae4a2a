"""The final round: re-measure the best feasible candidates and both baselines interleaved, on this host and
meter, and choose on those medians.

Candidates are measured one after another during the search, minutes apart; on a shared machine the load in
those minutes differs, and between close candidates that is the whole difference. Re-measuring the finalists
in turns (A B C, B C A, C A B, ...) spreads slow and fast moments over all of them, and the ratio to each
baseline comes from the same rounds on the same meter and host.
"""

from __future__ import annotations

import socket
import statistics

from greenlm.errors import GreenlmError
from greenlm.optimize.candidate import measure_config
from greenlm.optimize.config import EvalSettings
from greenlm.optimize.row import CandidateRow
from greenlm.progress import Progress, no_progress
from greenlm.workload.interleave import measure_interleaved

COST = "decode_j_per_token"


def final_round(
    settings: EvalSettings,
    rows: list[CandidateRow],
    rounds: int,
    progress: Progress = no_progress,
) -> dict[str, dict]:
    """{row key: median and spread of decode J/token and tokens/s over `rounds` interleaved single-repeat
    measurements, with the meter and host}. Each row runs in a process of its own (see workload.interleave:
    the saved winner will run alone, and two engines in one process slow each other)."""
    names = {row.key: row.label or row.key for row in rows}  # errors name a row by its label
    if len(set(names.values())) < len(names):
        names = {key: key for key in names}
    configs = {
        names[row.key]: measure_config(
            settings,
            row.candidate,
            row.loaded.model_path if row.loaded else None,
            repeats=1,
            num_prompts=settings.num_prompts,
        )
        for row in rows
    }
    try:
        results = measure_interleaved(configs, rounds, progress=progress)
    except GreenlmError as exc:
        raise GreenlmError(f"final round, {exc}") from None
    host = socket.gethostname()
    return {
        key: _summary([_figures(r.to_dict()) for r in results[name]], host) for key, name in names.items()
    }


def _figures(record: dict) -> dict:
    return {
        k: record[k]
        for k in (COST, "decode_tokens_per_s", "carbon_g_per_1k_tokens", "meter", "energy_source")
    }


def _summary(values: list[dict], host: str) -> dict:
    costs = [v[COST] for v in values]
    return {
        COST: statistics.median(costs),
        "spread": {"min": min(costs), "max": max(costs)},
        "per_round": costs,
        "decode_tokens_per_s": statistics.median(v["decode_tokens_per_s"] for v in values),
        "carbon_g_per_1k_tokens": statistics.median(v["carbon_g_per_1k_tokens"] for v in values),
        "meter": values[0]["meter"],
        "energy_source": values[0]["energy_source"],
        "host": host,
        "rounds": len(values),
    }


def within_noise(a: dict, b: dict) -> bool:
    """Two finalists whose ranges over the rounds overlap: the order between them is not established."""
    return a["spread"]["max"] >= b["spread"]["min"] and b["spread"]["max"] >= a["spread"]["min"]
