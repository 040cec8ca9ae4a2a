"""Pareto front and selection over measured candidates: cost (decode J/token) against quality loss.

Pure functions over plain dicts so the search, the report and the tests share one definition.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

COST = "decode_j_per_token"


@dataclass(frozen=True)
class QualityBudget:
    max_ppl_increase_pct: float = 3.0
    max_kld: float = 0.05

    def admits(self, row: dict) -> bool:
        return (
            row.get("ppl_increase_pct") is not None
            and row.get("kld") is not None
            and row["ppl_increase_pct"] <= self.max_ppl_increase_pct
            and row["kld"] <= self.max_kld
        )

    def excess(self, row: dict) -> float:
        """How far outside the budget a row is, in budget units (0 inside): ranks the closest misses."""
        over_ppl = max(0.0, (row.get("ppl_increase_pct") or 0.0) - self.max_ppl_increase_pct) / max(
            self.max_ppl_increase_pct, 1e-9
        )
        over_kld = max(0.0, (row.get("kld") or 0.0) - self.max_kld) / max(self.max_kld, 1e-9)
        return max(over_ppl, over_kld)


def dominates(a: dict, b: dict, loss: str = "kld") -> bool:
    """a is no worse than b in cost and loss, and strictly better in one."""
    return a[COST] <= b[COST] and a[loss] <= b[loss] and (a[COST] < b[COST] or a[loss] < b[loss])


def real(row: dict) -> bool:
    """A row whose cost is a real saving: `simulated` variants (fake-quantized float weights) are quality
    studies, never an energy figure to choose or plot as a saving."""
    return row.get("execution") != "simulated"


def pareto_front(rows: Sequence[dict], loss: str = "kld") -> list[dict]:
    """Non-dominated real rows, sorted by cost. Rows missing either figure, and simulated ones, are ignored."""
    usable = [r for r in rows if r.get(COST) is not None and r.get(loss) is not None and real(r)]
    front = [r for r in usable if not any(dominates(o, r, loss) for o in usable if o is not r)]
    return sorted(front, key=lambda r: (r[COST], r[loss]))


def choose(rows: Sequence[dict], budget: QualityBudget) -> dict | None:
    """The least J/token among real rows inside the quality budget; None when nothing meets it."""
    feasible = [r for r in rows if r.get(COST) is not None and budget.admits(r) and real(r)]
    return min(feasible, key=lambda r: (r[COST], r["kld"])) if feasible else None


def closest_misses(rows: Sequence[dict], budget: QualityBudget, count: int = 3) -> list[dict]:
    measured = [r for r in rows if r.get(COST) is not None and r.get("kld") is not None]
    return sorted(measured, key=lambda r: (budget.excess(r), r[COST]))[:count]
