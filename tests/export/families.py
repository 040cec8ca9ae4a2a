"""Tiny random models of every family the GGUF exporter writes, built from their transformers configs (no
download), with the test tokenizer. Norm weights and biases are randomized too: a mapping or offset error in
them would go unseen with their default ones and zeros."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import tiny_tokenizer

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
