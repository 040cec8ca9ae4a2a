"""Load a resolved model through transformers; keep dequantized GGUF weights in a safetensors cache."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from greenlm.errors import GreenlmError
from greenlm.io import atomic_directory
from greenlm.models.spec import ModelSpec
from greenlm.models.variant import load_variant
from greenlm.paths import cache_dir

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    model: Any  # transformers PreTrainedModel
    tokenizer: Any
    spec: ModelSpec
    load_s: float
    # "gguf-dequantize" (first load of a GGUF), "cache" (its safetensors copy), "hf-dir", "variant"
    load_source: str


def _offline() -> None:
    # Nothing may wait on a hub time-out: every load is from local files.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    # transformers draws a "Loading weights" bar per load: noise in greenlm's own progress output.
    hf_logging.disable_progress_bar()


def gguf_cache_path(spec: ModelSpec) -> Path:
    return cache_dir() / "models" / f"{spec.path.stem}-{spec.fingerprint()}"


def _load_gguf(spec: ModelSpec):
    folder, name = str(spec.path.parent), spec.path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    except Exception as exc:  # transformers raises many types for truncated or foreign files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GreenlmError(
            f"cannot load GGUF {spec.path}: {first[:200]} (is the file complete and a supported architecture?)"
        ) from None
    return model, tokenizer


def _write_cache(model, tokenizer, target: Path) -> None:
    """transformers refuses save_pretrained on a GGUF-loaded model: copy the weights into a fresh one."""
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    fresh.load_state_dict(model.state_dict())
    with atomic_directory(target, replace=True) as tmp:  # a reader sees no cache or a whole one
        fresh.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def _load_hf_dir(path: Path, dtype):
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GreenlmError(f"cannot load model directory {path}: {first[:200]}") from None
    return model, tokenizer


def load_model(
    spec: ModelSpec, *, dtype: str = "float32", device: str = "cpu", use_cache: bool = True
) -> LoadedModel:
    """Load `spec` for inference. GGUF weights are dequantized once, then read from the cache."""
    _offline()
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype)
    if torch_dtype is None:
        raise GreenlmError(f"unknown dtype '{dtype}': use float32, bfloat16 or float16")
    start = time.perf_counter()
    if spec.is_gguf:
        cached = gguf_cache_path(spec)
        if use_cache and (cached / "config.json").is_file():
            model, tokenizer = _load_hf_dir(cached, torch_dtype)
            source = "cache"
        else:
            model, tokenizer = _load_gguf(spec)
            if use_cache:
                _write_cache(model, tokenizer, cached)
                log.info("cached dequantized weights in %s", cached)
            model = model.to(torch_dtype)
            source = "gguf-dequantize"
    elif spec.kind == "variant":
        model, tokenizer = load_variant(spec.path, torch_dtype)
        source = "variant"
    else:
        model, tokenizer = _load_hf_dir(spec.path, torch_dtype)
        source = "hf-dir"
    model = model.to(device).eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(model, tokenizer, spec, time.perf_counter() - start, source)
