"""Variant directories: what `greenlm compress` writes, and how greenlm (and plain transformers) reload it.

A variant is a Hugging Face model directory plus `greenlm-variant.json`, the manifest holding the recipe, the
parent's identity, `execution` (real | simulated), per-step reports and the quality measured at creation.
Dense variants are ordinary transformers checkpoints. Variants with low-bit modules store their tensors in
`greenlm-quantized.safetensors` (a name transformers does not pick up by mistake) and list each module's
kind and spec in the manifest, so greenlm rebuilds the modules empty and fills them from the file.
The directory appears whole or not at all (`greenlm.io.atomic_directory`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safetensors.torch import load_model as load_safetensors
from safetensors.torch import save_model
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

import greenlm.kernels.linear  # noqa: F401  (registers every quantized module kind)
from greenlm.errors import GreenlmError
from greenlm.kernels.base import QUANTIZED_MODULES, QuantizedModule
from greenlm.models.manifest import MANIFEST_FORMAT, read_manifest, write_manifest

QUANTIZED_WEIGHTS = "greenlm-quantized.safetensors"


def quantized_modules(model) -> dict[str, dict[str, Any]]:
    """`{module name: {kind, spec}}` for every low-bit module that replaced an nn.Linear."""
    return {
        name: {"kind": module.kind, "spec": module.spec()}
        for name, module in model.named_modules()
        if isinstance(module, QuantizedModule)
    }


def save_variant_files(model, tokenizer, directory: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write weights, config, tokenizer and manifest into `directory` (a temporary one: see `atomic_directory`).
    Returns the manifest as written, with the weight layout and quantized-module specs filled in."""
    modules = quantized_modules(model)
    if modules:
        model.config.save_pretrained(directory)
        # save_model drops tied duplicates (lm_head = embed_tokens) that save_file would refuse
        save_model(model, str(directory / QUANTIZED_WEIGHTS), metadata={"format": "pt"})
        weights = {"file": QUANTIZED_WEIGHTS, "layout": "greenlm-quantized", "plain_transformers": False}
    else:
        model.save_pretrained(directory)
        weights = {"file": "model.safetensors", "layout": "transformers", "plain_transformers": True}
    if (
        getattr(model, "generation_config", None) is not None
        and not (directory / "generation_config.json").exists()
    ):
        model.generation_config.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    manifest = dict(manifest, format=MANIFEST_FORMAT, weights=weights, quantized_modules=modules)
    write_manifest(directory, manifest)
    return manifest


def load_variant(path: Path, dtype) -> tuple[Any, Any]:
    """Load variant directory `path` as (model, tokenizer) in `dtype` (a torch dtype)."""
    manifest = read_manifest(path)
    modules = manifest.get("quantized_modules") or {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        if not modules:
            return AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype), tokenizer
        config = AutoConfig.from_pretrained(str(path))
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    except GreenlmError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GreenlmError(f"cannot load variant {path}: {first[:200]}") from None
    _rebuild_quantized(model, modules, path)
    return model, tokenizer


def _rebuild_quantized(model, modules: dict[str, dict], path: Path) -> None:
    for name, entry in modules.items():
        cls = QUANTIZED_MODULES.get(entry["kind"])
        if cls is None:
            raise GreenlmError(
                f"variant {path} uses quantized module kind '{entry['kind']}' that this greenlm does not know "
                f"(known: {', '.join(sorted(QUANTIZED_MODULES)) or 'none'}): upgrade greenlm"
            )
        parent_name, _, child = name.rpartition(".")
        try:
            parent = model.get_submodule(parent_name) if parent_name else model
        except AttributeError:
            raise GreenlmError(
                f"variant {path} lists module '{name}' that its config does not have: it is corrupt"
            ) from None
        setattr(parent, child, cls.from_spec(entry["spec"]))
    file = path / QUANTIZED_WEIGHTS
    if not file.is_file():
        raise GreenlmError(
            f"variant {path} is missing {QUANTIZED_WEIGHTS}: the variant directory is incomplete"
        )
    try:
        load_safetensors(model, str(file), strict=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GreenlmError(f"cannot load the weights of variant {path}: {first[:200]}") from None
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()
