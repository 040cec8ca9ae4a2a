"""A float GGUF export run through llama.cpp reproduces transformers' logits of the same model.

Tolerances (float32 export, llama.cpp's default f16 KV cache): tiny random Llama, max |logit difference|
<= 2e-3 and KL(transformers || llama.cpp) <= 1e-6 per position; built-in SmolLM2-135M on a 512-token
window, max |logit difference| <= 0.15, mean KL <= 1e-4 and top-1 agreement >= 99%.
"""

from __future__ import annotations

import pytest
import torch

from tests.conftest import build_tiny_model
from tests.export.helpers import (
    TINY_MAX_ABS_LOGIT,
    TINY_MAX_KLD,
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
    assert got.shape == ref.shape
    assert (got - ref).abs().max() <= TINY_MAX_ABS_LOGIT
    assert kld(ref, got) <= TINY_MAX_KLD


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
    from greenlm.export.gguf_writer import write_float_gguf
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
    assert (got - ref).abs().max() <= TINY_MAX_ABS_LOGIT
    assert kld(ref, got) <= TINY_MAX_KLD


def test_uniformly_pruned_heads_keep_llama_with_explicit_head_dim(tmp_path):
    """What `greenlm compress` prune_heads writes: fewer heads everywhere, head_dim kept explicit
    (heads x head_dim != hidden size)."""
    from greenlm.export.gguf_writer import write_float_gguf
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
    assert (got - ref).abs().max() <= TINY_MAX_ABS_LOGIT


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
    assert (got - hf_logits(reloaded.model, [ids])).abs().max() <= TINY_MAX_ABS_LOGIT


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
    assert (got - ref).abs().max() <= 0.15
    assert kld(ref, got) <= 1e-4
    assert float((got.argmax(-1) == ref.argmax(-1)).float().mean()) >= 0.99
