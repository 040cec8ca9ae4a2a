"""llama.cpp quantization of an exported model: types, the tensor types really written, the importance matrix."""

from __future__ import annotations

import pytest

from greenlm.errors import GreenlmError
from tests.helpers import export_gguf, hf_logits, kld, needs_llamacpp, sample_ids

pytestmark = needs_llamacpp


def test_quant_types_are_llama_cpp_names():
    from greenlm.llamacpp import quant_types

    types = quant_types()
    assert types[:3] == ["f32", "f16", "bf16"]
    for name in ("q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0"):
        assert name in types


def test_unknown_quant_type_lists_the_valid_ones(tmp_path):
    from greenlm.export import ExportConfig

    with pytest.raises(GreenlmError) as info:
        ExportConfig(out=str(tmp_path / "x.gguf"), quant="q3_zz")
    message = str(info.value)
    assert "unknown quant type 'q3_zz'" in message and "q4_k_m" in message and "\n" not in message


def test_very_low_bit_types_need_an_importance_matrix(tmp_path):
    from greenlm.export import ExportConfig

    with pytest.raises(GreenlmError, match="needs an importance matrix: add --imatrix"):
        ExportConfig(out=str(tmp_path / "x.gguf"), quant="iq2_xxs")
    with pytest.raises(GreenlmError, match="drop --imatrix"):
        ExportConfig(out=str(tmp_path / "x.gguf"), quant="f16", imatrix=True)


def test_q8_0_is_close_and_reports_its_tensor_types(tiny_model_dir, tiny_loaded, tmp_path):
    from greenlm.engines.llamacpp_engine import LlamaCppEngine

    result = export_gguf(tiny_model_dir, tmp_path / "tiny-q8_0.gguf", quant="q8_0")
    by_type = result.tensor_types["by_type"]
    assert set(by_type) == {"q8_0", "f32"}  # weight matrices q8_0, norms f32
    assert result.tensor_types["nominal_type"] == "q8_0" and not result.tensor_types["fallback"]
    assert result.quantizer.startswith("llama.cpp llama_model_quantize")
    ids = sample_ids(tiny_loaded.tokenizer)
    engine = LlamaCppEngine(result.out, model_name="q8")
    try:
        got = engine.logits([ids])
        assert engine.describe()["quant_type"] == "q8_0"
    finally:
        engine.close()
    assert kld(hf_logits(tiny_loaded.model, [ids]), got) < 1e-3


def test_k_quants_fall_back_on_rows_not_256_wide(tiny_model_dir, tmp_path):
    """The 64-wide tiny model cannot hold k-quants: the report says which tensors fell back and why."""
    result = export_gguf(tiny_model_dir, tmp_path / "tiny-q4km.gguf", quant="q4_k_m")
    report = result.tensor_types
    assert report["nominal_type"] == "q4_k_m"
    assert not any("_k" in name for name in report["by_type"])
    assert report["fallback"] and {f["row_width"] for f in report["fallback"]} <= {64, 128}
    assert any("not multiples of the 256-wide k-quant block" in n for n in result.notes)


def test_k_quants_apply_on_256_wide_rows(wide_model_dir, tmp_path):
    result = export_gguf(wide_model_dir, tmp_path / "wide-q4km.gguf", quant="q4_k_m")
    assert "q4_k" in result.tensor_types["by_type"]
    assert result.file_mb < export_gguf(wide_model_dir, tmp_path / "wide-f16.gguf", quant="f16").file_mb


def test_importance_matrix_changes_the_quantized_weights(wide_model_dir, tmp_path):
    from greenlm.llamacpp.inspect import _reader

    plain = export_gguf(wide_model_dir, tmp_path / "plain.gguf", quant="q4_k_m")
    guided = export_gguf(
        wide_model_dir,
        tmp_path / "guided.gguf",
        quant="q4_k_m",
        imatrix=True,
        imatrix_samples=4,
        imatrix_tokens=32,
    )
    # q, k, v, o, gate, up, down per layer, and the tied output head (filed under token_embd)
    assert guided.imatrix["tensors"] == 2 * 7 + 1
    assert guided.imatrix["samples"] == 4
    a = {t.name: bytes(t.data) for t in _reader(plain.out).tensors}
    b = {t.name: bytes(t.data) for t in _reader(guided.out).tensors}
    assert a.keys() == b.keys()
    assert a["blk.0.ffn_down.weight"] != b["blk.0.ffn_down.weight"]
    assert a["blk.0.attn_norm.weight"] == b["blk.0.attn_norm.weight"]  # norms are not quantized


@pytest.mark.realmodel
def test_builtin_q4_k_m_is_mostly_q5_0(tmp_path):
    """The issue's planning note: k-quants fall back on SmolLM2's 576-wide rows; the report shows it."""
    result = export_gguf("smollm2-135m", tmp_path / "smollm2-q4km.gguf", quant="q4_k_m")
    by_type = result.tensor_types["by_type"]
    assert max(by_type, key=lambda t: by_type[t]["params"]) == "q5_0"
    assert {f["row_width"] for f in result.tensor_types["fallback"]} == {576}
