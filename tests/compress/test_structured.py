"""MLP channel and attention head pruning: consistent shapes, a runnable model, plain-transformers reload."""

import pytest
import torch

from greenlm.compress import apply_step
from greenlm.compress.structured import (
    PruneChannels,
    PruneHeads,
    channel_scores,
    head_scores,
    keep_heads,
    refit_columns,
)
from greenlm.errors import GreenlmError
from tests.compress.tiny import context, greedy, load_tiny, logits, prompt_ids


def test_keep_heads_keeps_the_best_inside_each_kv_group_in_order():
    scores = torch.tensor([0.1, 0.9, 0.5, 0.7, 0.2, 0.8])  # 2 kv groups of 3 query heads
    assert keep_heads(scores, kv_heads=2, keep_per_group=2).tolist() == [1, 2, 3, 5]


def test_channel_and_head_scores_are_output_energy():
    w = torch.randn(5, 8)
    x = torch.randn(100, 8)
    h = x.T @ x
    energy = torch.stack([((x[:, j : j + 1] * w[:, j]) ** 2).sum() for j in range(8)])
    assert torch.allclose(channel_scores(w, (x * x).sum(0)), energy, rtol=1e-4)
    per_head = torch.stack(
        [((x[:, 2 * k : 2 * k + 2] @ w[:, 2 * k : 2 * k + 2].T) ** 2).sum() for k in range(4)]
    )
    assert torch.allclose(head_scores(w, h, head_dim=2), per_head, rtol=1e-4)


def test_refit_recovers_a_column_that_is_a_mix_of_the_kept_ones():
    torch.manual_seed(0)
    x = torch.randn(200, 4)
    x = torch.cat([x, (x[:, :1] + 2 * x[:, 1:2])], dim=1)  # column 4 is redundant
    w = torch.randn(3, 5)
    kept = torch.tensor([0, 1, 2, 3])
    refit = refit_columns(w, x.T @ x, kept, damp=0.0)
    assert torch.allclose(x[:, kept] @ refit.T, x @ w.T, atol=1e-3)
    assert not torch.allclose(x[:, kept] @ w[:, kept].T, x @ w.T, atol=1e-1)  # plain slicing does not


def _reload(model, tmp_path):
    from transformers import AutoModelForCausalLM

    model.save_pretrained(tmp_path / "m")
    return AutoModelForCausalLM.from_pretrained(tmp_path / "m")


@pytest.mark.parametrize("refit", [True, False])
def test_channel_pruning_shrinks_every_mlp_and_reloads(tiny_model_dir, tmp_path, refit):
    model, tok = load_tiny(tiny_model_dir)
    width = model.config.intermediate_size  # 128
    report = apply_step(model, PruneChannels(ratio=0.25, refit=refit), context(tok))
    assert report.execution == "real"
    assert model.config.intermediate_size == 96 == report.details["intermediate_after"]
    for layer in model.model.layers:
        assert layer.mlp.gate_proj.weight.shape == (96, 64) == layer.mlp.up_proj.weight.shape
        assert layer.mlp.down_proj.weight.shape == (64, 96)
    assert report.details["params_after"] < report.details["params_before"]
    ids = prompt_ids(tok)
    assert greedy(model, ids, use_cache=True) == greedy(model, ids, use_cache=False)
    again = _reload(model, tmp_path)
    assert again.config.intermediate_size == 96 < width
    assert torch.allclose(logits(again, ids), logits(model, ids), atol=1e-5)


def test_head_pruning_keeps_gqa_consistent_and_reloads(tiny_model_dir, tmp_path):
    model, tok = load_tiny(tiny_model_dir)  # 4 query heads in 2 kv groups, head_dim 16
    report = apply_step(model, PruneHeads(ratio=0.5), context(tok))
    cfg = model.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (2, 2, 16)
    for layer, removed in zip(model.model.layers, report.details["heads_removed_per_layer"], strict=True):
        attn = layer.self_attn
        assert attn.q_proj.weight.shape == (2 * 16, 64) and attn.o_proj.weight.shape == (64, 2 * 16)
        assert attn.k_proj.weight.shape == (2 * 16, 64)  # key/value heads kept
        assert attn.num_key_value_groups == 1
        assert len(removed) == 2 and {h // 2 for h in removed} == {0, 1}  # one from each group
    ids = prompt_ids(tok)
    assert greedy(model, ids, use_cache=True) == greedy(model, ids, use_cache=False)
    again = _reload(model, tmp_path)
    assert again.config.num_attention_heads == 2
    assert torch.allclose(logits(again, ids), logits(model, ids), atol=1e-5)


def test_refit_lowers_the_output_error(tiny_model_dir):
    base, tok = load_tiny(tiny_model_dir)
    ids = context(tok).calibration_windows()
    reference = logits(base, ids)
    errors = {}
    for refit in (False, True):
        model, _ = load_tiny(tiny_model_dir)
        apply_step(model, PruneChannels(ratio=0.5, refit=refit), context(tok))
        errors[refit] = (logits(model, ids) - reference).pow(2).mean().item()
    assert errors[True] < errors[False]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: PruneChannels(ratio=0), "between 0 and 1"),
        (lambda: PruneChannels(multiple_of=0), ">= 1"),
        (lambda: PruneHeads(ratio=1.2), "between 0 and 1"),
        (lambda: PruneHeads(refit="yes"), "true or false"),
    ],
)
def test_bad_settings(make, message):
    with pytest.raises(GreenlmError, match=message):
        make()


def test_ratios_that_round_to_nothing_or_everything_are_refused(tiny_model_dir):
    model, tok = load_tiny(tiny_model_dir)
    with pytest.raises(GreenlmError, match="choose a ratio between 0.50 and 0.50"):
        apply_step(model, PruneHeads(ratio=0.1), context(tok))  # 2 heads per group: 0.1 removes none
    with pytest.raises(GreenlmError, match="leaves 128 of 128"):
        apply_step(model, PruneChannels(ratio=0.05), context(tok))
    assert model.config.intermediate_size == 128 and model.config.num_attention_heads == 4
