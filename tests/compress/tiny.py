"""Helpers for the compression tests: tiny random Llamas loaded fresh, and a small calibration context."""

from __future__ import annotations

import torch

from greenlm.compress import CompressContext

# Small enough that a calibration pass of the tiny model takes milliseconds.
CALIBRATION = dict(calibration_samples=4, calibration_tokens=64)


def load_tiny(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(str(path)).eval(), AutoTokenizer.from_pretrained(str(path))


def context(tokenizer) -> CompressContext:
    return CompressContext(tokenizer=tokenizer, **CALIBRATION)


def prompt_ids(tokenizer, text: str = "The for statement is used to iterate") -> torch.Tensor:
    return torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])


def greedy(model, ids: torch.Tensor, new_tokens: int = 6, use_cache: bool = True) -> list[int]:
    with torch.inference_mode():
        out = model.generate(
            ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, use_cache=use_cache
        )
    return out[0, ids.shape[1] :].tolist()


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=ids, use_cache=False).logits
