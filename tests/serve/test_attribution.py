"""The split rule on numbers: shares sum to the step, follow the measured phase costs, never go negative."""

import math

import pytest

from greenlm.serve.attribution import EnergyTotals, PhaseCosts, StepWork, split_step, update_costs


def test_equal_weights_until_both_phases_are_measured():
    shares = split_step(10.0, [StepWork("a", prefill_tokens=3), StepWork("b", decode_tokens=1)], PhaseCosts())
    assert [s.energy_j for s in shares] == pytest.approx([7.5, 2.5])
    assert shares[0].prefill_j == pytest.approx(7.5) and shares[0].decode_j == 0
    assert shares[1].decode_j == pytest.approx(2.5) and shares[1].prefill_j == 0


def test_tokens_weighted_by_their_measured_cost():
    # a decode token measured at 0.4 J, a prefill token at 0.02 J: 20 prompt tokens weigh as much as one decode
    costs = PhaseCosts(prefill_j_per_token=0.02, decode_j_per_token=0.4)
    work = [
        StepWork("new", prefill_tokens=20),
        StepWork("old1", decode_tokens=1),
        StepWork("old2", decode_tokens=1),
    ]
    shares = split_step(3.0, work, costs)
    assert [s.energy_j for s in shares] == pytest.approx([1.0, 1.0, 1.0])
    assert sum(s.energy_j for s in shares) == pytest.approx(3.0, rel=1e-15)


def test_a_request_with_both_phases_splits_its_share():
    costs = PhaseCosts(prefill_j_per_token=1.0, decode_j_per_token=2.0)
    (share,) = split_step(8.0, [StepWork("r", prefill_tokens=2, decode_tokens=1)], costs)
    assert share.prefill_j == pytest.approx(4.0) and share.decode_j == pytest.approx(4.0)


def test_shares_sum_exactly_and_are_never_negative():
    costs = PhaseCosts(prefill_j_per_token=0.013, decode_j_per_token=0.37)
    work = [StepWork(str(i), prefill_tokens=i % 7, decode_tokens=int(i % 3 == 0)) for i in range(1, 50)]
    for energy in (0.0, 1e-12, 0.1, 3.3333333, 1234.5678):
        shares = split_step(energy, work, costs)
        assert math.fsum(s.energy_j for s in shares) == pytest.approx(energy, rel=1e-12, abs=1e-18)
        assert all(s.prefill_j >= 0 and s.decode_j >= 0 for s in shares)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError):
        split_step(-1.0, [StepWork("a", decode_tokens=1)], PhaseCosts())
    with pytest.raises(ValueError):
        split_step(float("nan"), [StepWork("a", decode_tokens=1)], PhaseCosts())
    with pytest.raises(ValueError, match="idle"):
        split_step(1.0, [], PhaseCosts())


def test_costs_learn_only_from_single_phase_steps():
    costs = update_costs(PhaseCosts(), 2.0, [StepWork("a", prefill_tokens=10)])
    assert costs.prefill_j_per_token == pytest.approx(0.2) and costs.decode_j_per_token is None
    costs = update_costs(costs, 1.0, [StepWork("a", decode_tokens=1), StepWork("b", decode_tokens=1)])
    assert costs.decode_j_per_token == pytest.approx(0.5)
    mixed = update_costs(costs, 100.0, [StepWork("a", prefill_tokens=1), StepWork("b", decode_tokens=1)])
    assert mixed == costs
    smoothed = update_costs(costs, 10.0, [StepWork("a", decode_tokens=1)], smoothing=0.1)
    assert smoothed.decode_j_per_token == pytest.approx(0.9 * 0.5 + 0.1 * 10.0)


def test_totals_keep_the_invariant():
    totals = EnergyTotals()
    costs = PhaseCosts(0.1, 0.5)
    totals.add_idle(0.7)
    for energy in (1.0, 2.5, 0.333):
        work = [StepWork("a", prefill_tokens=5), StepWork("b", decode_tokens=1)]
        totals.add_step(energy, split_step(energy, work, costs))
    totals.add_idle(0.2)
    assert totals.windows_j == pytest.approx(0.7 + 1.0 + 2.5 + 0.333 + 0.2)
    assert abs(totals.invariant_gap_j()) < 1e-12
    assert totals.idle_j == pytest.approx(0.9) and (totals.step_windows, totals.idle_windows) == (3, 2)
