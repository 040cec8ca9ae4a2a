"""Median and spread over repeats: the median is what we report, the spread says how far to trust it."""

from __future__ import annotations

import statistics


def summarize(values: list[float]) -> dict[str, float]:
    med = statistics.median(values)
    out = {"median": med, "min": min(values), "max": max(values)}
    out["stdev"] = statistics.stdev(values) if len(values) > 1 else 0.0
    # Relative spread (max - min) / median: one comparable number across metrics.
    out["rel_spread"] = (out["max"] - out["min"]) / med if med else 0.0
    return out
