"""A tiny reference model with peaked next-token distributions, and a perturbed copy of it as a 'variant'."""

from __future__ import annotations

import json

import pytest

WINDOW = 64  # tiny windows keep each test well under a second
SMALL = dict(window_tokens=WINDOW, max_eval_tokens=8 * WINDOW)


def _peaked_copy(src, dst, *, noise: float = 0.0, seed: int = 0):
    """Sharpen the random model's near-uniform outputs (as a trained model's are), optionally perturb it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(src)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.model.norm.weight.mul_(8.0)
        if noise:
            for name, param in model.named_parameters():
                if param.dim() == 2 and "embed" not in name:
                    param.add_(torch.randn(param.shape, generator=generator) * noise * param.std())
    model.save_pretrained(dst)
    AutoTokenizer.from_pretrained(src).save_pretrained(dst)
    return dst


@pytest.fixture(scope="session")
def reference_dir(tiny_model_dir, tmp_path_factory):
    return _peaked_copy(tiny_model_dir, tmp_path_factory.mktemp("tiny-reference"))


@pytest.fixture(scope="session")
def variant_dir(tiny_model_dir, tmp_path_factory):
    """A variant directory as `greenlm compress` writes one: weights plus a manifest naming its parent."""
    path = _peaked_copy(tiny_model_dir, tmp_path_factory.mktemp("tiny-variant"), noise=0.3, seed=1)
    return path


def write_manifest(variant, parent_name: str, **extra) -> None:
    manifest = {"recipe": [{"method": "noise"}], "parent": {"name": parent_name}, "execution": "simulated"}
    manifest.update(extra)
    (variant / "greenlm-variant.json").write_text(json.dumps(manifest))
