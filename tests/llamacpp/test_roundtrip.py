"""A float GGUF export run through llama.cpp reproduces transformers' logits of the same model or variant,
within the round-trip tolerances stated in greenlm/export/verify.py (ROUNDTRIP_TINY, ROUNDTRIP_BUILTIN)."""

from __future__ import annotations

import pytest
import torch

from greenlm.llamacpp.verify import ROUNDTRIP_BUILTIN, ROUNDTRIP_TINY
from tests.helpers import (
    assert_roundtrip,
    build_tiny_model,
    export_gguf,
    hf_logits,
    kld,
    needs_llamacpp,
    sample_ids,
)

pytestmark = needs_llamacpp


def _llamacpp_logits(path, windows):
    from greenlm.engines.llamacpp_engine import LlamaCppEngine

    engine = LlamaCppEngine(path, model_name="test")
    try:
        return engine.logits(windows)
    finally:
        engine.close()


def test_f32_export_reproduces_transformers_logits(tiny_loaded, tiny_gguf):
    ids = sample_ids(tiny_loaded.tokenizer)
    windows = [ids[:40], ids[8:48]]
    ref = hf_logits(tiny_loaded.model, windows)
    got = _llamacpp_logits(tiny_gguf, windows)
    assert_roundtrip(ref, got, ROUNDTRIP_TINY)


def test_the_tolerance_catches_an_export_fault(tiny_loaded, tmp_path, monkeypatch):
    """The bound is tight enough to fail a real fault: q/k rows left in Hugging Face's rotary order."""
    import greenlm.llamacpp.gguf_writer as writer

    monkeypatch.setattr(writer, "permute_rotary", lambda weight, _n_head: weight)
    written = writer.write_float_gguf(tiny_loaded.model, tiny_loaded.tokenizer, tmp_path / "wrong.gguf")
    ids = sample_ids(tiny_loaded.tokenizer)
    got = _llamacpp_logits(written.path, [ids])
    with pytest.raises(AssertionError):
        assert_roundtrip(hf_logits(tiny_loaded.model, [ids]), got, ROUNDTRIP_TINY)


def test_f16_export_is_close_but_coarser(tiny_model_dir, tiny_loaded, tmp_path):
    result = export_gguf(tiny_model_dir, tmp_path / "tiny-f16.gguf", quant="f16")
    assert result.tensor_types["by_type"].keys() == {"f16", "f32"}  # norms stay f32
    ids = sample_ids(tiny_loaded.tokenizer)
    ref = hf_logits(tiny_loaded.model, [ids])
    got = _llamacpp_logits(result.out, [ids])
    assert (got - ref).abs().max() <= 2e-2
    assert kld(ref, got) <= 1e-4


def _shrink_linear(linear: torch.nn.Linear, rows=None, cols=None) -> torch.nn.Linear:
    weight = linear.weight.data
    weight = weight[rows] if rows is not None else weight
    weight = weight[:, cols] if cols is not None else weight
    new = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    new.weight.data = weight.clone()
    return new


def _prune_mlp(mlp, keep: int) -> None:
    idx = torch.arange(keep)
    mlp.gate_proj = _shrink_linear(mlp.gate_proj, rows=idx)
    mlp.up_proj = _shrink_linear(mlp.up_proj, rows=idx)
    mlp.down_proj = _shrink_linear(mlp.down_proj, cols=idx)


def _prune_query_heads(attn, keep_heads: list[int], head_dim: int) -> None:
    rows = torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in keep_heads])
    attn.q_proj = _shrink_linear(attn.q_proj, rows=rows)
    attn.o_proj = _shrink_linear(attn.o_proj, cols=rows)
    attn.num_key_value_groups = len(keep_heads) // (attn.k_proj.out_features // head_dim)


def test_layers_of_different_sizes_export_as_deci(tmp_path):
    """Channel and head pruning that differs per layer: llama.cpp's `deci` architecture takes per-layer
    head counts and feed-forward widths, and reproduces the pruned model."""
    from greenlm.llamacpp.gguf_writer import write_float_gguf
    from greenlm.models import load_model, resolve_model

    loaded = load_model(resolve_model(str(build_tiny_model(tmp_path / "m", layers=3))))
    model = loaded.model
    _prune_mlp(model.model.layers[0].mlp, 64)
    _prune_mlp(model.model.layers[1].mlp, 96)
    _prune_query_heads(model.model.layers[1].self_attn, [0, 2], head_dim=16)  # one per kv group
    ids = sample_ids(loaded.tokenizer)
    ref = hf_logits(model, [ids])

    written = write_float_gguf(model, loaded.tokenizer, tmp_path / "nonuniform.gguf")
    assert written.arch == "deci"
    assert [(s.n_head, s.n_head_kv, s.n_ff) for s in written.layers] == [(4, 2, 64), (2, 2, 96), (4, 2, 128)]
    got = _llamacpp_logits(written.path, [ids])
    assert_roundtrip(ref, got, ROUNDTRIP_TINY)


def test_uniformly_pruned_heads_keep_llama_with_explicit_head_dim(tmp_path):
    """What `greenlm compress` prune_heads writes: fewer heads everywhere, head_dim kept explicit
    (heads x head_dim != hidden size)."""
    from greenlm.llamacpp.gguf_writer import write_float_gguf
    from greenlm.models import load_model, resolve_model

    loaded = load_model(resolve_model(str(build_tiny_model(tmp_path / "m"))))
    model = loaded.model
    for layer in model.model.layers:
        _prune_query_heads(layer.self_attn, [1, 3], head_dim=16)
    model.config.num_attention_heads = 2
    model.config.head_dim = 16
    ids = sample_ids(loaded.tokenizer)
    ref = hf_logits(model, [ids])
    written = write_float_gguf(model, loaded.tokenizer, tmp_path / "heads.gguf")
    assert written.arch == "llama" and written.layers[0].n_head == 2
    got = _llamacpp_logits(written.path, [ids])
    assert_roundtrip(ref, got, ROUNDTRIP_TINY)


def test_dropped_layers_variant_directory(tmp_path):
    """A saved model with fewer decoder layers (as drop_layers leaves it) exports from its directory."""
    from greenlm.models import load_model, resolve_model

    source = load_model(resolve_model(str(build_tiny_model(tmp_path / "m", layers=4))))
    model = source.model
    del model.model.layers[1]
    model.config.num_hidden_layers = 3
    model.save_pretrained(tmp_path / "dropped")
    source.tokenizer.save_pretrained(tmp_path / "dropped")
    result = export_gguf(tmp_path / "dropped", tmp_path / "dropped.gguf")
    assert result.layers == 3
    reloaded = load_model(resolve_model(str(tmp_path / "dropped")))
    ids = sample_ids(source.tokenizer)
    got = _llamacpp_logits(result.out, [ids])
    assert_roundtrip(hf_logits(reloaded.model, [ids]), got, ROUNDTRIP_TINY)


@pytest.mark.realmodel
def test_builtin_model_f32_export_roundtrip(tmp_path):
    from greenlm.data import load_text, split_text
    from greenlm.models import load_model, resolve_model

    loaded = load_model(resolve_model(None))
    result = export_gguf("smollm2-135m", tmp_path / "smollm2-f32.gguf")
    assert result.tokenizer_check.startswith("llama.cpp and transformers agree")
    text = split_text(load_text(None)).text("evaluation")
    ids = loaded.tokenizer(text[:20000], add_special_tokens=False)["input_ids"][:512]
    ref = hf_logits(loaded.model, [ids])
    got = _llamacpp_logits(result.out, [ids])
    error = assert_roundtrip(ref, got, ROUNDTRIP_BUILTIN)
    print(f"built-in f32 round trip: {error}")


@pytest.mark.realmodel
def test_builtin_variant_with_layers_dropped_round_trips(tmp_path):
    """The issue's example: the built-in model with 4 decoder layers removed, exported from its variant
    directory, against transformers running that variant."""
    from greenlm.compress.pipeline import CompressConfig, compress
    from greenlm.data import load_text, split_text
    from greenlm.models import load_model, resolve_model

    variant_dir = tmp_path / "drop4"
    compress(
        CompressConfig(
            recipe=[{"method": "drop_layers", "count": 4}],
            out=str(variant_dir),
            calibration_samples=8,
            calibration_tokens=128,
            evaluate=False,
        )
    )
    result = export_gguf(variant_dir, tmp_path / "drop4-f32.gguf")
    assert result.layers == 26 and result.variant["execution"] == "real"
    variant = load_model(resolve_model(str(variant_dir)))
    text = split_text(load_text(None)).text("evaluation")
    ids = variant.tokenizer(text[:20000], add_special_tokens=False)["input_ids"][:512]
    error = assert_roundtrip(
        hf_logits(variant.model, [ids]), _llamacpp_logits(result.out, [ids]), ROUNDTRIP_BUILTIN
    )
    print(f"built-in drop4 f32 round trip: {error}")
