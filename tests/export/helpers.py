"""Shared by the llama.cpp engine and export tests: tiny GGUF files made here, and transformers logits to match."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

needs_llamacpp = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None,
    reason="llama-cpp-python is not installed (`make test` installs the llamacpp extra)",
)


SAMPLE_TEXT = (
    "def f(x):\n    return x + 1  # the function object\n\nThe with statement is used to wrap the execution "
    "of a block with methods defined by a context manager. 2024 items, 3.5 each."
)


def export_gguf(model_dir: Path, out: Path, quant: str = "f32", **kwargs):
    from greenlm.export import ExportConfig, export_model

    return export_model(ExportConfig(out=str(out), model=str(model_dir), quant=quant, **kwargs))


def hf_logits(model, token_ids: list[list[int]]):
    import torch

    with torch.inference_mode():
        return model(input_ids=torch.tensor(token_ids)).logits.float()


def kld(ref_logits, logits) -> float:
    """Mean KL(reference || model) over positions, full vocabulary."""
    import torch

    lp = torch.log_softmax(ref_logits.double(), -1)
    lq = torch.log_softmax(logits.double(), -1)
    return float((lp.exp() * (lp - lq)).sum(-1).mean())


def sample_ids(tokenizer, count: int = 48) -> list[int]:
    ids = tokenizer(SAMPLE_TEXT, add_special_tokens=False)["input_ids"]
    assert len(ids) >= count
    return ids[:count]


def roundtrip_error(ref_logits, logits) -> dict:
    """How far llama.cpp's logits are from transformers', in the terms RoundTripTolerance bounds."""
    return {
        "max_abs_logit": float((logits - ref_logits).abs().max()),
        "mean_kld": kld(ref_logits, logits),
        "top1_agreement": float((logits.argmax(-1) == ref_logits.argmax(-1)).float().mean()),
    }


def assert_roundtrip(ref_logits, logits, tolerance) -> dict:
    """Fail unless `logits` reproduce `ref_logits` within `tolerance` (greenlm.llamacpp.verify)."""
    assert logits.shape == ref_logits.shape
    error = roundtrip_error(ref_logits, logits)
    assert error["max_abs_logit"] <= tolerance.max_abs_logit, error
    assert error["mean_kld"] <= tolerance.max_mean_kld, error
    assert error["top1_agreement"] >= tolerance.min_top1_agreement, error
    return error
