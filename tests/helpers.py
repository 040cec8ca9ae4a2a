"""Helpers the test folders share: the CLI as a user runs it, tiny random models with a real tokenizer (a Llama,
and one of every family the GGUF exporter writes), tiny GGUF files made here, and transformers logits to match.
Fixtures built from them are in tests/conftest.py."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import pytest

from greenlm.cli import main

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


# --- the CLI ------------------------------------------------------------------------------------------------


def run_cli(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["greenlm", *args])
    with pytest.raises(SystemExit) as info:
        main()
    captured = capsys.readouterr()
    return info.value.code, captured.out, captured.err


# --- tiny models ----------------------------------------------------------------------------------------------


def tiny_tokenizer(*, add_bos: bool = False, chat_template=None):
    """A byte-level BPE tokenizer trained here on the CPython docs (320 tokens): no download.

    `add_bos`: the tokenizer starts every sequence with <s> (a post-processor, as Llama 3's does)."""
    from pydoc_data.topics import topics

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False
    )
    tok.train_from_iterator(list(topics.values())[:20], trainer)
    if add_bos:
        bos = tok.token_to_id("<s>")
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A $B:1", special_tokens=[("<s>", bos)]
        )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>"
    )
    if chat_template is not None:
        fast.chat_template = chat_template
    return fast


def build_tiny_model(
    path,
    *,
    layers: int = 2,
    hidden: int = 64,
    seed: int = 0,
    add_bos: bool = False,
    chat_template=None,
    context: int = 512,
):
    """A random Llama with a byte-level BPE tokenizer trained here on the CPython docs: no download.

    `add_bos`: the tokenizer starts every sequence with <s> (a post-processor, as Llama 3's does)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    fast = tiny_tokenizer(add_bos=add_bos, chat_template=chat_template)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=context,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


# Tiny random models of every family the GGUF exporter writes, built from their transformers configs (no
# download), with the test tokenizer. Norm weights and biases are randomized too: a mapping or offset error in
# them would go unseen with their default ones and zeros.

COMMON = dict(
    hidden_size=64,
    intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=512,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=2,
)


def _configs():
    import transformers as T

    return {
        "llama": (T.LlamaConfig, T.LlamaForCausalLM, dict(num_hidden_layers=2, tie_word_embeddings=True)),
        "mistral": (T.MistralConfig, T.MistralForCausalLM, dict(num_hidden_layers=2, sliding_window=4096)),
        "qwen2": (T.Qwen2Config, T.Qwen2ForCausalLM, dict(num_hidden_layers=2, tie_word_embeddings=True)),
        "qwen3": (T.Qwen3Config, T.Qwen3ForCausalLM, dict(num_hidden_layers=2)),
        # a 16-token window, so the 40-token test windows really slide
        "gemma2": (
            T.Gemma2Config,
            T.Gemma2ForCausalLM,
            dict(num_hidden_layers=2, query_pre_attn_scalar=16, sliding_window=16),
        ),
        # six layers: five sliding, one global, as llama.cpp's gemma3 lays them out
        "gemma3": (
            T.Gemma3TextConfig,
            T.Gemma3ForCausalLM,
            dict(num_hidden_layers=6, query_pre_attn_scalar=16, sliding_window=16),
        ),
        "phi3": (
            T.Phi3Config,
            T.Phi3ForCausalLM,
            dict(num_hidden_layers=2, partial_rotary_factor=0.5, tie_word_embeddings=False),
        ),
    }


FAMILY_NAMES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3")


def randomize_norms_and_biases(model, seed: int = 0) -> None:
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith(".bias"):
                param.add_(torch.randn(param.shape, generator=gen) * 0.2)


def build_tiny_family(path: Path, family: str, seed: int = 0, **overrides) -> Path:
    import torch

    config_cls, model_cls, extra = _configs()[family]
    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    config = config_cls(vocab_size=len(tokenizer), **{**COMMON, **extra, **overrides})
    model = model_cls(config)
    randomize_norms_and_biases(model, seed)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def headless_browser() -> str:
    """Chromium's path, for the tests that draw a page. `make test` installs it when run as root (as CI does)
    and then requires it (GREENLM_REQUIRE_BROWSER=1); a user without it gets a skip that says how to get it."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        if os.environ.get("GREENLM_REQUIRE_BROWSER") == "1":
            pytest.fail("chromium is missing although `make test` ran as root and should have installed it")
        pytest.skip("no chromium: install Debian's package (sudo apt-get install chromium) to run this test")
    return browser
