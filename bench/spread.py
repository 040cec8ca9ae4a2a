"""A row's figure over interleaved rounds, and whether two rows differ by more than their own noise.

Rows measured in turns (greenlm.workload.interleave) each get one figure per round. Their medians order them,
but on a shared or virtual machine the rounds of one row spread over 20-30%, and a gap smaller than that is
as likely to come from the moments each row happened to run in as from the rows themselves. So a difference
is claimed ("lower", "higher": cheaper, dearer, undominated) only when the gap between the medians exceeds
BOTH rows' min-max range over the rounds; anything less is "within noise". Pure functions, standard library
only: bench/readme.py renders with them without loading torch.
"""

from __future__ import annotations

import statistics

LOWER, HIGHER, WITHIN_NOISE = "lower", "higher", "within noise"
RULE = (
    "a difference is claimed only when the gap between two rows' medians exceeds both rows' min-max range "
    "over the rounds; otherwise it is marked within noise"
)


def summarize(per_round: list[float]) -> dict:
    """{median, min, max, rel_spread, per_round} of one row's figure, one value per round."""
    if not per_round:
        raise ValueError("no rounds to summarize")
    median = statistics.median(per_round)
    low, high = min(per_round), max(per_round)
    return {
        "median": median,
        "min": low,
        "max": high,
        "rel_spread": (high - low) / median if median else None,
        "per_round": list(per_round),
    }


def width(s: dict) -> float:
    return s["max"] - s["min"]


def compare(a: dict, b: dict) -> str:
    """How row `a`'s median stands against row `b`'s (each a `summarize` record, or any dict with median,
    min and max): LOWER or HIGHER when the gap exceeds both ranges, else WITHIN_NOISE."""
    gap = a["median"] - b["median"]
    if abs(gap) > width(a) and abs(gap) > width(b):
        return LOWER if gap < 0 else HIGHER
    return WITHIN_NOISE


def clearly_lower(a: dict, b: dict) -> bool:
    return compare(a, b) == LOWER
