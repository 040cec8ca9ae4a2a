"""The quality math on tiny tensors: hand-computed values, the lower bound, the unbiased tail estimate."""

import math

import pytest
import torch

from greenlm.errors import GreenlmError
from greenlm.evaluate.metrics import (
    exact_kl,
    next_token_logprobs,
    sample_tail,
    sampled_kl,
    target_nll,
    top1_matches,
    top_k_kl,
    top_k_mass,
    top_k_summary,
)
from greenlm.evaluate.windows import spread, window_starts

P = [0.5, 0.3, 0.2]
Q = [0.2, 0.5, 0.3]


def logp(rows):
    return torch.tensor(rows, dtype=torch.float64).log()


def test_kl_of_identical_distributions_is_zero():
    lp = torch.log_softmax(torch.randn(7, 50), -1)
    ids, values = top_k_summary(lp, 5)
    tail_ids, tail_logp = sample_tail(lp, ids, 8, torch.Generator().manual_seed(0))
    assert torch.all(exact_kl(lp, lp) == 0)
    assert torch.allclose(top_k_kl(ids, values, lp), torch.zeros(7, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(
        sampled_kl(ids, values, tail_ids, tail_logp, lp), torch.zeros(7, dtype=torch.float64)
    )


def test_hand_computed_values():
    lp, lq = logp([P]), logp([Q])
    exact = 0.5 * math.log(0.5 / 0.2) + 0.3 * math.log(0.3 / 0.5) + 0.2 * math.log(0.2 / 0.3)
    assert exact_kl(lp, lq).item() == pytest.approx(exact, rel=1e-12)
    # Top-1 keeps token 0 and merges {1, 2}: p = (0.5, 0.5), q = (0.2, 0.8).
    ids, values = top_k_summary(lp, 1)
    assert ids.tolist() == [[0]]
    merged = 0.5 * math.log(0.5 / 0.2) + 0.5 * math.log(0.5 / 0.8)
    assert top_k_kl(ids, values, lq).item() == pytest.approx(merged, rel=1e-9)
    assert merged < exact  # coarse-graining loses divergence
    # With every token kept, the rest bucket is empty and the bound is exact.
    ids, values = top_k_summary(lp, 3)
    assert top_k_kl(ids, values, lq).item() == pytest.approx(exact, rel=1e-9)
    assert top_k_mass(values).item() == pytest.approx(1.0)


def test_tail_estimate_with_one_tail_token_is_exact():
    # Top-2 of P leaves one tail token: every sample is token 2, so the estimate has no variance.
    lp, lq = logp([P]), logp([Q])
    ids, values = top_k_summary(lp, 2)
    tail_ids, tail_logp = sample_tail(lp, ids, 4, torch.Generator().manual_seed(0))
    assert tail_ids.tolist() == [[2, 2, 2, 2]]
    assert sampled_kl(ids, values, tail_ids, tail_logp, lq).item() == pytest.approx(exact_kl(lp, lq).item())


def test_lower_bound_never_exceeds_exact_and_tail_estimate_is_unbiased():
    torch.manual_seed(0)
    # Peaked distributions over a 2000-token vocabulary, like a language model's.
    ref = torch.log_softmax(torch.randn(400, 2000) * 3, -1)
    model = torch.log_softmax(ref + 0.3 * torch.randn(400, 2000), -1)
    exact = exact_kl(ref, model)
    ids, values = top_k_summary(ref, 32)
    bound = top_k_kl(ids, values, model)
    assert torch.all(bound <= exact + 1e-9)
    assert bound.mean() < 0.95 * exact.mean()  # the bound is visibly loose at this k ...
    tail_ids, tail_logp = sample_tail(ref, ids, 64, torch.Generator().manual_seed(1))
    estimate = sampled_kl(ids, values, tail_ids, tail_logp, model)
    assert estimate.mean().item() == pytest.approx(exact.mean().item(), rel=0.02)  # ... the estimate is not


def test_sample_tail_never_draws_top_k_tokens():
    lp = torch.log_softmax(torch.randn(20, 30), -1)
    ids, _ = top_k_summary(lp, 10)
    tail_ids, tail_logp = sample_tail(lp, ids, 50, torch.Generator().manual_seed(0))
    for row in range(20):
        assert not set(tail_ids[row].tolist()) & set(ids[row].tolist())
    assert torch.equal(tail_logp, lp.gather(-1, tail_ids))


def test_sample_tail_when_top_k_is_the_whole_vocabulary():
    lp = torch.log_softmax(torch.randn(3, 4), -1)
    ids, values = top_k_summary(lp, 10)  # clamped to the vocabulary
    assert ids.shape == (3, 4)
    tail_ids, tail_logp = sample_tail(lp, ids, 2, torch.Generator().manual_seed(0))
    other = torch.log_softmax(torch.randn(3, 4), -1)
    assert torch.allclose(sampled_kl(ids, values, tail_ids, tail_logp, other), exact_kl(lp, other))


def test_nll_top1_and_shift():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [9.0, 9.0, 9.0]])
    lp = next_token_logprobs(logits)
    assert lp.shape == (2, 3)  # the last position predicts beyond the window: not scored
    nll = target_nll(lp, torch.tensor([0, 2]))
    assert nll[0].item() == pytest.approx(-math.log(math.e**2 / (math.e**2 + 2)))
    assert nll[1].item() == pytest.approx(-math.log(1 / (math.e**3 + 2)))
    assert top1_matches(torch.tensor([0, 2]), lp).tolist() == [True, False]


def test_windows_are_spread_aligned_and_disjoint():
    assert spread(10, 2) == [2, 7]
    assert spread(5, 9) == [0, 1, 2, 3, 4]
    starts = window_starts(10_000, 100, 1000)
    assert len(starts) == 10 and starts == sorted(set(starts))
    assert all(s % 100 == 0 and s + 100 <= 10_000 for s in starts)
    assert starts[0] < 1000 and starts[-1] > 9000  # through the whole text, not only its start
    assert window_starts(10_000, 100, None) == list(range(0, 10_000, 100))


@pytest.mark.parametrize(
    "total, window, budget, message",
    [
        (50, 100, 1000, "fewer than one window"),
        (1000, 1, 1000, "--window-tokens"),
        (1000, 100, 50, "--max-eval-tokens"),
    ],
)
def test_window_errors(total, window, budget, message):
    with pytest.raises(GreenlmError, match=message):
        window_starts(total, window, budget)
