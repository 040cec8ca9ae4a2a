"""A variant made by `greenlm compress` (layers dropped, channels and heads pruned) exports and runs in llama.cpp
as the same model transformers loads from the variant directory."""

from __future__ import annotations

from greenlm.llamacpp.verify import ROUNDTRIP_TINY
from tests.helpers import (
    assert_roundtrip,
    build_tiny_model,
    export_gguf,
    hf_logits,
    needs_llamacpp,
    sample_ids,
)

pytestmark = needs_llamacpp


def test_compressed_variant_round_trips(tmp_path):
    from greenlm.compress.pipeline import CompressConfig, compress
    from greenlm.engines.llamacpp_engine import LlamaCppEngine
    from greenlm.models import load_model, resolve_model

    parent = build_tiny_model(tmp_path / "parent", layers=3)
    recipe = [
        {"method": "drop_layers", "count": 1},
        {"method": "prune_channels", "ratio": 0.5},
        {"method": "prune_heads", "ratio": 0.5},
    ]
    compress(
        CompressConfig(
            recipe=recipe,
            out=str(tmp_path / "variant"),
            model=str(parent),
            calibration_samples=4,
            calibration_tokens=64,
            evaluate=False,
        )
    )
    result = export_gguf(tmp_path / "variant", tmp_path / "variant.gguf")
    assert result.layers == 2 and result.arch == "llama"
    assert {(s["n_head"], s["n_head_kv"], s["n_ff"]) for s in result.per_layer} == {(2, 2, 64)}
    assert result.variant["execution"] == "real" and result.variant["recipe"]

    variant = load_model(resolve_model(str(tmp_path / "variant")))
    ids = sample_ids(variant.tokenizer)
    engine = LlamaCppEngine(result.out, model_name="variant")
    try:
        got = engine.logits([ids])
    finally:
        engine.close()
    assert_roundtrip(hf_logits(variant.model, [ids]), got, ROUNDTRIP_TINY)
