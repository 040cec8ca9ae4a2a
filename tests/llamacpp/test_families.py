"""Every family the exporter writes (greenlm/llamacpp/families.py), as a tiny random model built from its
transformers config: float and greenlm-coded GGUF files run through llama.cpp reproduce transformers' logits
within the stated tolerances; settings llama.cpp would compute differently are refused in one line."""

from __future__ import annotations

import dataclasses

import pytest

from greenlm.errors import GreenlmError
from greenlm.llamacpp.verify import ROUNDTRIP_CODED_TINY, ROUNDTRIP_TINY
from tests.helpers import (
    FAMILY_NAMES,
    assert_roundtrip,
    build_tiny_family,
    export_gguf,
    hf_logits,
    needs_llamacpp,
    sample_ids,
)

pytestmark = needs_llamacpp

ARCH = {
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "gemma2": "gemma2",
    "gemma3": "gemma3",
    "phi3": "phi3",
}
_built: dict = {}


def _dir_name(family: str) -> str:
    # llama.cpp gives models whose general.name contains "phi3" Phi-3's special-token rules (it looks up
    # <|endoftext|>, which the test tokenizer lacks), so the tiny Phi-3 is named otherwise
    return f"tiny-{family}".replace("phi3", "p3")


@pytest.fixture
def family_dir(request, tmp_path_factory):
    family = request.param
    if family not in _built:
        _built[family] = build_tiny_family(tmp_path_factory.mktemp("families") / _dir_name(family), family)
    return family, _built[family]


def _load(path):
    from greenlm.models import load_model, resolve_model

    return load_model(resolve_model(str(path)))


def _llamacpp_logits(path, windows):
    from greenlm.engines.llamacpp_engine import LlamaCppEngine

    engine = LlamaCppEngine(path, model_name="test")
    try:
        return engine.logits(windows)
    finally:
        engine.close()


def _windows(tokenizer):
    ids = sample_ids(tokenizer)
    return [ids[:40], ids[8:48]]  # 40 tokens: past the 16-token sliding window of the tiny Gemmas


@pytest.mark.parametrize("family_dir", FAMILY_NAMES, indirect=True)
def test_float_export_round_trips(family_dir, tmp_path):
    family, path = family_dir
    loaded = _load(path)
    windows = _windows(loaded.tokenizer)
    result = export_gguf(path, tmp_path / "f32.gguf")
    assert result.family == family and result.arch == ARCH[family]
    assert result.tokenizer_check.startswith("llama.cpp and transformers agree")
    assert_roundtrip(hf_logits(loaded.model, windows), _llamacpp_logits(result.out, windows), ROUNDTRIP_TINY)


@pytest.mark.parametrize("family_dir", FAMILY_NAMES, indirect=True)
def test_coded_export_round_trips(family_dir, tmp_path):
    """Int4 RTN codes on Q4_0's grid (gguf auto), written as greenlm's blocks: bit-exact in the file, and
    llama.cpp's logits within the coded tolerance of transformers running the variant."""
    from greenlm.compress.pipeline import CompressConfig, compress

    family, path = family_dir
    compress(
        CompressConfig(
            recipe=[{"method": "rtn", "bits": 4, "group_size": 32, "kernel": "dense"}],
            out=str(tmp_path / "v"),
            model=str(path),
            evaluate=False,
        )
    )
    result = export_gguf(tmp_path / "v", tmp_path / "q4_0.gguf", quant="auto", embedding_type="f32")
    assert result.family == family and result.quant_type == "q4_0"
    assert result.codes["bit_exact"] == result.codes["tensors_checked"] > 0
    variant = _load(tmp_path / "v")
    windows = _windows(variant.tokenizer)
    assert_roundtrip(
        hf_logits(variant.model, windows), _llamacpp_logits(result.out, windows), ROUNDTRIP_CODED_TINY
    )


@pytest.mark.parametrize("family_dir", ["gemma2"], indirect=True)
def test_the_tolerance_catches_a_missing_gemma_norm_offset(family_dir, tmp_path, monkeypatch):
    """Gemma's norms multiply by (1 + w): written without the 1, the file must fail the bound."""
    from greenlm.llamacpp import families

    _family, path = family_dir
    wrong = dataclasses.replace(families.FAMILIES["gemma2"], norm_offset=0.0)
    monkeypatch.setitem(families.BY_CLASS, "Gemma2ForCausalLM", wrong)
    loaded = _load(path)
    windows = _windows(loaded.tokenizer)
    result = export_gguf(path, tmp_path / "wrong.gguf")
    with pytest.raises(AssertionError):
        assert_roundtrip(
            hf_logits(loaded.model, windows), _llamacpp_logits(result.out, windows), ROUNDTRIP_TINY
        )


@pytest.mark.parametrize(
    "family, overrides, message",
    [
        ("gemma2", {"query_pre_attn_scalar": 256}, "query_pre_attn_scalar 256 differs from head_dim 16"),
        (
            "gemma2",
            {"layer_types": ["full_attention", "sliding_attention"]},
            "sliding window on even layers only",
        ),
        (
            "gemma3",
            {"layer_types": ["sliding_attention"] * 4 + ["full_attention"] * 2},
            "5 sliding-window layers per global one",
        ),
        ("qwen2", {"use_sliding_window": True}, "uses a sliding window"),
        ("llama", {"hidden_act": "gelu"}, "activation gelu"),
        (
            "llama",
            {"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}},
            "rope scaling 'yarn'",
        ),
    ],
)
def test_settings_llama_cpp_would_compute_differently_are_refused(tmp_path, family, overrides, message):
    path = build_tiny_family(tmp_path / "m", family, **overrides)
    with pytest.raises(GreenlmError, match=message):
        export_gguf(path, tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()


def test_unevenly_pruned_non_llama_layers_are_refused(tmp_path):
    import torch

    from greenlm.llamacpp.gguf_writer import write_float_gguf

    loaded = _load(build_tiny_family(tmp_path / "m", "qwen3"))
    mlp = loaded.model.model.layers[0].mlp
    keep = torch.arange(64)
    for name in ("gate_proj", "up_proj"):
        old = getattr(mlp, name)
        new = torch.nn.Linear(old.in_features, 64, bias=False)
        new.weight.data = old.weight.data[keep].clone()
        setattr(mlp, name, new)
    down = torch.nn.Linear(64, mlp.down_proj.out_features, bias=False)
    down.weight.data = mlp.down_proj.weight.data[:, keep].clone()
    mlp.down_proj = down
    with pytest.raises(GreenlmError, match="only Llama models export with per-layer sizes"):
        write_float_gguf(loaded.model, loaded.tokenizer, tmp_path / "x.gguf")
