"""Shared by the llama.cpp engine and export tests: tiny GGUF files made here, and transformers logits to match."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

needs_llamacpp = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None,
    reason="llama-cpp-python is not installed (`make test` installs the llamacpp extra)",
)

# Round-trip tolerance for a float32 GGUF of a random tiny Llama run through llama.cpp against transformers
# float32 on the same tokens. llama.cpp keeps its KV cache in f16, so logits differ by ~1e-4 (measured
# 2.6e-4 at most); the bounds leave margin for other CPUs' kernels.
TINY_MAX_ABS_LOGIT = 2e-3
TINY_MAX_KLD = 1e-6

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
