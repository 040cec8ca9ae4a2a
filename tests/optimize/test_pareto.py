from greenlm.optimize.pareto import QualityBudget, choose, closest_misses, dominates, pareto_front
from greenlm.optimize.row import CandidateRow


def row(name, cost, kld, ppl_pct=0.0, execution="real"):
    figures = {"decode_j_per_token": cost, "kld": kld, "ppl_increase_pct": ppl_pct}
    return CandidateRow.from_dict(
        {"key": name, "engine": "transformers", "status": "measured", "execution": execution, **figures}
    )


ROWS = [
    row("base", 0.5, 0.0),
    row("q8", 0.2, 0.005, 0.4),
    row("q4", 0.12, 0.06, 4.0),
    row("drop2", 0.45, 0.08, 10.0),  # dominated by q8 (costlier and worse)
    row("q6", 0.2, 0.004, 0.3),  # dominates q8 (same cost, better quality)
]


def test_front_is_non_dominated_and_sorted():
    front = [r.key for r in pareto_front(ROWS)]
    assert front == ["q4", "q6", "base"]
    for r in ROWS:
        if r.key not in front:
            assert any(dominates(f, r) for f in pareto_front(ROWS))


def test_choose_least_cost_inside_budget():
    assert choose(ROWS, QualityBudget(3.0, 0.05)).key == "q6"
    assert choose(ROWS, QualityBudget(5.0, 0.1)).key == "q4"


def test_impossible_budget_gives_none_and_closest_misses():
    budget = QualityBudget(max_ppl_increase_pct=0.1, max_kld=0.001)
    assert choose(ROWS[1:], budget) is None
    misses = [r.key for r in closest_misses(ROWS[1:], budget, 2)]
    assert misses == ["q6", "q8"]


def test_rows_without_figures_are_ignored():
    rows = [*ROWS, row("rejected", None, 0.9)]
    assert "rejected" not in [r.key for r in pareto_front(rows)]


def test_simulated_rows_are_never_on_the_front_nor_chosen():
    rows = [*ROWS, row("fake-q2", 0.01, 0.001, execution="simulated")]
    assert "fake-q2" not in [r.key for r in pareto_front(rows)]
    assert choose(rows, QualityBudget(3.0, 0.05)).key == "q6"
