"""Unstructured and N:M pruning: exact mask counts on tiny tensors, then on a tiny model."""

import pytest
import torch

from greenlm.compress import apply_step
from greenlm.compress.prune import (
    SPARSITY_NOTE,
    Magnitude,
    NMSparsity,
    Wanda,
    magnitude_scores,
    nm_mask,
    row_mask,
    wanda_scores,
)
from greenlm.errors import GreenlmError
from tests.compress.tiny import context, load_tiny


@pytest.mark.parametrize("ratio, pruned", [(0.5, 8), (0.25, 4), (0.1, 2), (0.9, 14)])
def test_row_mask_prunes_exactly_the_ratio_in_every_row(ratio, pruned):
    scores = torch.randn(7, 16).abs()
    keep = row_mask(scores, ratio)
    assert ((~keep).sum(1) == pruned).all()
    # the pruned ones are the lowest of their row
    for row, k in zip(scores, keep, strict=True):
        assert row[~k].max() <= row[k].min()


def test_row_mask_is_exact_even_with_ties():
    keep = row_mask(torch.ones(3, 10), 0.3)
    assert ((~keep).sum(1) == 3).all()


@pytest.mark.parametrize("n, m", [(2, 4), (1, 4), (4, 8), (3, 4)])
def test_nm_mask_has_exactly_n_of_every_m(n, m):
    scores = torch.randn(5, 4 * m)
    keep = nm_mask(scores, n, m)
    groups = keep.reshape(5, -1, m)
    assert (groups.sum(-1) == n).all()
    # the kept ones are the largest of their group
    s = scores.reshape(5, -1, m)
    assert (
        s.masked_fill(~groups, float("inf")).amin(-1) >= s.masked_fill(groups, float("-inf")).amax(-1)
    ).all()


def test_nm_mask_refuses_widths_not_divisible_by_m():
    with pytest.raises(GreenlmError, match="divisible by 4"):
        nm_mask(torch.randn(2, 6), 2, 4)


def test_wanda_keeps_small_weights_on_loud_inputs():
    weight = torch.tensor([[1.0, 0.1, 0.5, 0.4]])
    norms = torch.tensor([0.01, 100.0, 1.0, 1.0])
    assert row_mask(magnitude_scores(weight), 0.5).tolist() == [[True, False, True, False]]
    assert row_mask(wanda_scores(weight, norms), 0.5).tolist() == [[False, True, True, False]]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Wanda(ratio=0.0), "between 0 and 1"),
        (lambda: Magnitude(ratio=1.0), "between 0 and 1"),
        (lambda: Wanda(ratio=True), "between 0 and 1"),
        (lambda: NMSparsity(n=4, m=4), "n must be below m"),
        (lambda: NMSparsity(n=0, m=4), ">= 1"),
        (lambda: NMSparsity(score="random"), "'wanda' or 'magnitude'"),
        (lambda: Wanda(skip="lm_head"), "list of module-name patterns"),
    ],
)
def test_bad_settings_are_one_clear_line(make, message):
    with pytest.raises(GreenlmError, match=message) as info:
        make()
    assert "\n" not in str(info.value)


def _decoder_linears(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"}


@pytest.mark.parametrize("step", [Wanda(ratio=0.5), Magnitude(ratio=0.25)])
def test_unstructured_pruning_on_a_model_reaches_the_ratio_per_row(tiny_model_dir, step):
    model, tok = load_tiny(tiny_model_dir)
    head_before = model.lm_head.weight.clone()
    report = apply_step(model, step, context(tok))
    for name, linear in _decoder_linears(model).items():
        zeros = (linear.weight == 0).sum(1)
        assert (zeros == round(step.ratio * linear.in_features)).all(), name
    assert torch.equal(model.lm_head.weight, head_before)  # skipped by default (tied to the embedding)
    assert report.execution == "simulated"
    assert SPARSITY_NOTE in report.notes and "no dense-kernel speed-up on CPU" in SPARSITY_NOTE
    assert report.details["sparsity"] == pytest.approx(step.ratio)


def test_wanda_uses_calibration_activations(tiny_model_dir):
    wanda, tok = load_tiny(tiny_model_dir)
    magnitude, _ = load_tiny(tiny_model_dir)
    apply_step(wanda, Wanda(ratio=0.5), context(tok))
    apply_step(magnitude, Magnitude(ratio=0.5), context(tok))
    name = "model.layers.0.mlp.down_proj"
    masks = [dict(m.named_modules())[name].weight != 0 for m in (wanda, magnitude)]
    assert not torch.equal(*masks)


def test_nm_on_a_model_keeps_n_of_m_and_runs(tiny_model_dir):
    model, tok = load_tiny(tiny_model_dir)
    report = apply_step(model, NMSparsity(n=2, m=4), context(tok))
    for linear in _decoder_linears(model).values():
        groups = (linear.weight != 0).reshape(linear.out_features, -1, 4)
        assert (groups.sum(-1) == 2).all()
    assert report.details["pattern"] == "2:4" and report.execution == "simulated"
    with torch.inference_mode():
        assert torch.isfinite(model(input_ids=torch.tensor([[5, 6, 7]])).logits).all()


def test_skip_patterns_leave_modules_alone(tiny_model_dir):
    model, tok = load_tiny(tiny_model_dir)
    before = model.model.layers[1].mlp.up_proj.weight.clone()
    apply_step(model, Magnitude(ratio=0.5, skip=("lm_head", "model.layers.1.*")), context(tok))
    assert torch.equal(model.model.layers[1].mlp.up_proj.weight, before)
    assert (model.model.layers[0].mlp.up_proj.weight == 0).any()
