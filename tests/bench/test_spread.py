"""A difference between two rows is claimed only when it exceeds both rows' own range over the rounds."""

import pytest
from spread import HIGHER, LOWER, WITHIN_NOISE, compare, summarize


def row(median, low, high):
    return {"median": median, "min": low, "max": high}


def test_summarize_keeps_every_round_and_the_range():
    s = summarize([0.30, 0.20, 0.25])
    assert (s["median"], s["min"], s["max"]) == (0.25, 0.20, 0.30)
    assert s["rel_spread"] == pytest.approx(0.4)
    assert s["per_round"] == [0.30, 0.20, 0.25]
    with pytest.raises(ValueError):
        summarize([])


def test_a_gap_beyond_both_ranges_is_claimed():
    assert compare(row(0.20, 0.19, 0.21), row(0.30, 0.29, 0.31)) == LOWER
    assert compare(row(0.30, 0.29, 0.31), row(0.20, 0.19, 0.21)) == HIGHER


def test_a_gap_inside_either_range_is_within_noise():
    # the fastpath rows issue 23 named: 0.260 vs 0.280 J/token with 24-33% ranges
    assert compare(row(0.260, 0.23, 0.31), row(0.280, 0.25, 0.33)) == WITHIN_NOISE
    # narrow on one side is not enough: the other row's own range covers the gap
    assert compare(row(0.20, 0.199, 0.201), row(0.25, 0.18, 0.32)) == WITHIN_NOISE
    assert compare(row(0.25, 0.18, 0.32), row(0.20, 0.199, 0.201)) == WITHIN_NOISE


def test_a_gap_equal_to_a_range_is_not_claimed():
    assert compare(row(0.20, 0.19, 0.21), row(0.22, 0.21, 0.23)) == WITHIN_NOISE
