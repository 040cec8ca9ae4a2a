"""Shared fixtures: an isolated cache and store per test, and a tiny random Llama with a real tokenizer."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def shared_cache_dir(tmp_path_factory):
    # The dequantized built-in model takes ~30 s to make: one cache per test session, never the user's own.
    return tmp_path_factory.mktemp("greenlm-cache")


@pytest.fixture(autouse=True)
def _isolated_paths(tmp_path, monkeypatch, shared_cache_dir):
    monkeypatch.setenv("GREENLM_DB", str(tmp_path / "store" / "greenlm.db"))
    monkeypatch.setenv("GREENLM_CACHE_DIR", str(shared_cache_dir))


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


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))
