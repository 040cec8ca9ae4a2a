"""Variant directories: what `greenlm compress` writes, and how greenlm (and plain transformers) reload it.

A variant is a Hugging Face model directory plus `greenlm-variant.json`, the manifest holding the recipe, the
parent's identity, `execution` (real | simulated), per-step reports and the quality measured at creation.
Dense variants are ordinary transformers checkpoints. Variants with low-bit modules store their tensors in
`greenlm-quantized.safetensors` (a name transformers does not pick up by mistake) and list each module's
kind and spec in the manifest, so greenlm rebuilds the modules empty and fills them from the file.
Layers quantized on a GGUF format's grid but kept as dense floats (simulated) also have their integer codes
in `greenlm-codes.safetensors`, so `greenlm export` can write them as GGUF blocks without re-rounding.
The directory appears whole or not at all (`greenlm.io.atomic_directory`).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file, save_model
from safetensors.torch import load_model as load_safetensors
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

import greenlm.kernels.linear  # noqa: F401  (registers every quantized module kind)
from greenlm.errors import GreenlmError
from greenlm.kernels.base import QUANTIZED_MODULES, QuantizedModule
from greenlm.kernels.linear import pack_int4, unpack_int4
from greenlm.kernels.quant_grid import QuantizedWeight
from greenlm.models.manifest import Manifest, read_manifest, write_manifest

QUANTIZED_WEIGHTS = "greenlm-quantized.safetensors"
CODES_FILE = "greenlm-codes.safetensors"


def quantized_modules(model) -> dict[str, dict[str, Any]]:
    """`{module name: {kind, spec}}` for every low-bit module that replaced an nn.Linear."""
    return {
        name: {"kind": module.kind, "spec": module.spec()}
        for name, module in model.named_modules()
        if isinstance(module, QuantizedModule)
    }


def save_codes(directory: Path, codes: dict[str, QuantizedWeight]) -> dict[str, Any]:
    """Write dense layers' integer codes to CODES_FILE; returns the manifest entry describing them."""
    tensors = {}
    layers = {}
    for name, w in codes.items():
        tensors[f"{name}.q"] = (pack_int4(w.q) if w.bits == 4 else w.q.to(torch.uint8)).contiguous()
        tensors[f"{name}.scale"] = w.scale.float().contiguous()
        tensors[f"{name}.zero"] = w.zero.float().contiguous()
        layers[name] = {"bits": w.bits, "group_size": w.group_size, "shape": list(w.shape)}
    save_file(tensors, str(directory / CODES_FILE), metadata={"format": "greenlm-codes/1"})
    return {"file": CODES_FILE, "layers": layers}


def load_codes(path: Path) -> dict[str, QuantizedWeight]:
    """The integer codes a variant directory keeps for its dense quantized layers ({} when it has none)."""
    entry = read_manifest(path).codes or {}
    layers = entry.get("layers") or {}
    if not layers:
        return {}
    try:
        tensors = load_file(str(path / entry.get("file", CODES_FILE)))
        codes = {}
        for name, info in layers.items():
            q = tensors[f"{name}.q"]
            q = unpack_int4(q) if info["bits"] == 4 else q
            codes[name] = QuantizedWeight(
                q, tensors[f"{name}.scale"], tensors[f"{name}.zero"], int(info["bits"]), info["group_size"]
            )
            if list(q.shape) != list(info["shape"]):
                raise ValueError(f"{name} codes are {list(q.shape)}, the manifest says {info['shape']}")
    except (OSError, KeyError, ValueError, SafetensorError) as exc:
        raise GreenlmError(
            f"the codes file of variant {path} is unreadable ({exc}): the directory is corrupt"
        ) from None
    return codes


def save_variant_files(
    model,
    tokenizer,
    directory: Path,
    manifest: Manifest,
    codes: dict[str, QuantizedWeight] | None = None,
) -> Manifest:
    """Write weights, config, tokenizer and manifest into `directory` (a temporary one: see `atomic_directory`).
    Returns the manifest as written, with the weight layout and quantized-module specs filled in. `codes`:
    integer codes of layers stored as dense floats (see CODES_FILE)."""
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
    manifest = replace(
        manifest,
        weights=weights,
        quantized_modules=modules,
        codes=save_codes(directory, codes) if codes else None,
    )
    write_manifest(directory, manifest)
    return manifest


def load_variant(path: Path, dtype) -> tuple[Any, Any]:
    """Load variant directory `path` as (model, tokenizer) in `dtype` (a torch dtype)."""
    modules = read_manifest(path).quantized_modules
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
