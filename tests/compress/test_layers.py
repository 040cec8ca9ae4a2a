"""Decoder-layer removal: ranking by block influence, and a model that still runs, caches and reloads."""

import pytest
import torch

from greenlm.compress import apply_step
from greenlm.compress.layers import DropLayers, lowest_influence, remove_layers
from greenlm.data.calibration import block_influence
from greenlm.errors import GreenlmError
from tests.compress.tiny import context, greedy, load_tiny, logits, prompt_ids


@pytest.fixture(scope="module")
def four_layer_dir(tmp_path_factory):
    from tests.helpers import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny4"), layers=4)


def test_lowest_influence_picks_the_smallest_in_index_order():
    assert lowest_influence([0.9, 0.1, 0.5, 0.05, 0.3], 2) == [1, 3]
    assert lowest_influence([0.2, 0.2, 0.2], 1) == [0]  # ties: the earlier layer


def test_block_influence_is_one_minus_cosine_per_layer(four_layer_dir):
    model, tok = load_tiny(four_layer_dir)
    windows = context(tok).calibration_windows()
    scores = block_influence(model, windows)
    assert len(scores) == 4 and all(0.0 <= s <= 2.0 for s in scores)
    # cross-check layer 0 by hand from the hidden states transformers reports
    with torch.inference_mode():
        hidden = model(input_ids=windows, output_hidden_states=True).hidden_states
    cos = torch.nn.functional.cosine_similarity(hidden[0].reshape(-1, 64), hidden[1].reshape(-1, 64), dim=-1)
    assert scores[0] == pytest.approx(1 - cos.mean().item(), abs=1e-4)


def test_layer_removal_matches_skipping_those_layers(four_layer_dir):
    model, tok = load_tiny(four_layer_dir)
    ids = prompt_ids(tok)
    keep = [model.model.layers[i] for i in (0, 3)]
    with torch.inference_mode():  # the original model with layers 1 and 2 bypassed, by hand
        h = model.model.embed_tokens(ids)
        pos = torch.arange(ids.shape[1])[None]
        emb = model.model.rotary_emb(h, pos)
        mask = torch.full((ids.shape[1], ids.shape[1]), float("-inf")).triu(1)[None, None]
        for layer in keep:
            h = layer(h, attention_mask=mask, position_ids=pos, position_embeddings=emb)
            h = h[0] if isinstance(h, tuple) else h
        expected = model.lm_head(model.model.norm(h))
    remove_layers(model, [1, 2])
    assert torch.allclose(logits(model, ids), expected, atol=1e-5)


def test_dropped_model_runs_caches_and_reloads(four_layer_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    model, tok = load_tiny(four_layer_dir)
    report = apply_step(model, DropLayers(count=2), context(tok))
    assert report.execution == "real"
    assert model.config.num_hidden_layers == 2 and len(model.model.layers) == 2
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1]
    assert len(report.details["layers_removed"]) == 2 and len(report.details["block_influence"]) == 4
    assert report.details["params_after"] < report.details["params_before"]
    ids = prompt_ids(tok)
    # the KV cache holds one entry per remaining layer, so cached decoding equals recomputing everything
    assert greedy(model, ids, use_cache=True) == greedy(model, ids, use_cache=False)
    model.save_pretrained(tmp_path / "m")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert again.config.num_hidden_layers == 2
    assert torch.allclose(logits(again, ids), logits(model, ids), atol=1e-5)


def test_explicit_layers_are_removed(four_layer_dir):
    model, tok = load_tiny(four_layer_dir)
    last = model.model.layers[3]
    report = apply_step(model, DropLayers(layers=[0, 2]), context(tok))
    assert report.details["layers_removed"] == [0, 2] and report.details["ranking"] == "given"
    assert model.model.layers[1] is last


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: DropLayers(), "either 'count'"),
        (lambda: DropLayers(count=1, layers=[0]), "not both"),
        (lambda: DropLayers(count=0), ">= 1"),
        (lambda: DropLayers(layers=[1, 1]), "without repeats"),
        (lambda: DropLayers(layers=[-1]), "indices >= 0"),
    ],
)
def test_bad_settings(make, message):
    with pytest.raises(GreenlmError, match=message):
        make()


def test_cannot_drop_every_layer_or_a_missing_one(four_layer_dir):
    model, tok = load_tiny(four_layer_dir)
    with pytest.raises(GreenlmError, match="cannot drop 4 of 4"):
        apply_step(model, DropLayers(count=4), context(tok))
    with pytest.raises(GreenlmError, match="out of range"):
        apply_step(model, DropLayers(layers=[7]), context(tok))
    assert model.config.num_hidden_layers == 4  # refused before anything changed


@pytest.mark.realmodel
def test_dropping_two_layers_of_the_builtin_model(tmp_path):
    """ShortGPT on SmolLM2-135M: the variant is a 28-layer Llama that plain transformers loads, and its
    quality loss is measured (about +30% PPL here; bounded loosely so noise in small budgets cannot flip it)."""
    from transformers import AutoModelForCausalLM

    from greenlm.compress.pipeline import CompressConfig, compress

    out = tmp_path / "drop2"
    result = compress(
        CompressConfig(
            recipe=[DropLayers(count=2)],
            out=str(out),
            calibration_samples=8,
            calibration_tokens=256,
            eval_tokens=2048,
        )
    )
    assert result.execution == "real"
    assert result.manifest.architecture["num_hidden_layers"] == 28
    removed = result.manifest.steps[0]["details"]["layers_removed"]
    assert 0 not in removed and 29 not in removed  # the first and last layers turn the hidden state most
    quality = result.manifest.quality
    assert 0 < quality["ppl_increase_pct"] < 100 and quality["top1_agreement"] > 0.6
    assert AutoModelForCausalLM.from_pretrained(out).config.num_hidden_layers == 28
