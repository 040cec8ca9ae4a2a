"""Pareto front and selection over measured candidates: cost (search-time decode J/token) against quality loss
(KLD from the reference).

Pure functions over candidate rows, so the search, the report and the tests share one definition.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from greenlm.optimize.row import CandidateRow

COST = "decode_j_per_token"


@dataclass(frozen=True)
class QualityBudget:
    max_ppl_increase_pct: float = 3.0
    max_kld: float = 0.05

    def admits(self, row: CandidateRow) -> bool:
        return (
            row.ppl_increase_pct is not None
            and row.kld is not None
            and row.ppl_increase_pct <= self.max_ppl_increase_pct
            and row.kld <= self.max_kld
        )

    def excess(self, row: CandidateRow) -> float:
        """How far outside the budget a row is, in budget units (0 inside): ranks the closest misses."""
        over_ppl = max(0.0, (row.ppl_increase_pct or 0.0) - self.max_ppl_increase_pct) / max(
            self.max_ppl_increase_pct, 1e-9
        )
        over_kld = max(0.0, (row.kld or 0.0) - self.max_kld) / max(self.max_kld, 1e-9)
        return max(over_ppl, over_kld)


def _figures(row: CandidateRow) -> tuple[float, float]:
    return row.decode_j_per_token, row.kld


def dominates(a: CandidateRow, b: CandidateRow) -> bool:
    """a is no worse than b in cost and KLD, and strictly better in one."""
    (cost_a, kld_a), (cost_b, kld_b) = _figures(a), _figures(b)
    return cost_a <= cost_b and kld_a <= kld_b and (cost_a < cost_b or kld_a < kld_b)


def _usable(rows: Sequence[CandidateRow]) -> list[CandidateRow]:
    return [r for r in rows if r.decode_j_per_token is not None and r.kld is not None and r.real]


def pareto_front(rows: Sequence[CandidateRow]) -> list[CandidateRow]:
    """Non-dominated real rows, sorted by cost. Rows missing either figure, and simulated ones, are ignored."""
    usable = _usable(rows)
    front = [r for r in usable if not any(dominates(o, r) for o in usable if o is not r)]
    return sorted(front, key=_figures)


def choose(rows: Sequence[CandidateRow], budget: QualityBudget) -> CandidateRow | None:
    """The least J/token among real rows inside the quality budget; None when nothing meets it."""
    feasible = [r for r in _usable(rows) if budget.admits(r)]
    return min(feasible, key=_figures) if feasible else None


def closest_misses(rows: Sequence[CandidateRow], budget: QualityBudget, count: int = 3) -> list[CandidateRow]:
    measured = [r for r in rows if r.decode_j_per_token is not None and r.kld is not None]
    return sorted(measured, key=lambda r: (budget.excess(r), r.decode_j_per_token))[:count]
