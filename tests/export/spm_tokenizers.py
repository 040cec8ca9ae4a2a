"""Tiny SentencePiece-style tokenizers made here, offline, for export tests: a SentencePiece BPE model with byte
fallback trained by `sentencepiece` (tokenizer.model, as Llama 2 / Mistral / Gemma / Phi-3 ship it), and a
byte-fallback BPE with a Metaspace pre-tokenizer built with `tokenizers` (a tokenizer.json alone)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

# spaces, a double space, digits, accented Latin and CJK (absent from the training text: byte fallback), an
# emoji, a newline and indentation
PROBE = "Hello  world 2024, the café at 東京 costs 3.50 🙂\n    def f(x):\n        return x"


def _training_lines() -> list[str]:
    from pydoc_data.topics import topics

    text = "\n".join(list(topics.values())[:20])
    return [line for line in text.splitlines() if line.strip()]


def sentencepiece_model(folder: Path, *, vocab_size: int = 400, add_space_prefix: bool = True) -> Path:
    """Train a SentencePiece BPE model with byte fallback into `folder`/tokenizer.model."""
    import sentencepiece as spm

    folder.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_training_lines()),
        model_prefix=str(folder / "tokenizer"),
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False,
        add_dummy_prefix=add_space_prefix,
        normalization_rule_name="identity",
        minloglevel=2,
    )
    (folder / "tokenizer.vocab").unlink()
    return folder / "tokenizer.model"


def llama_tokenizer_from_model(model_file: Path, scratch: Path):
    """transformers' LlamaTokenizer built from a SentencePiece model, as from a Llama 2 repository."""
    from transformers import AutoTokenizer

    scratch.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_file, scratch / "tokenizer.model")
    (scratch / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>"})
    )
    return AutoTokenizer.from_pretrained(scratch)


def byte_fallback_bpe(vocab_size: int = 400):
    """A tokenizer.json-only byte-fallback BPE: <unk> <s> </s>, the 256 byte tokens, then pieces trained here;
    spaces as ▁ by a Metaspace pre-tokenizer that prepends one to the text (Llama 2's layout in tokenizers)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    metaspace = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
    trained = Tokenizer(models.BPE())
    trained.pre_tokenizer = metaspace
    trained.train_from_iterator(
        _training_lines(), trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False)
    )
    learned = json.loads(trained.to_str())["model"]
    specials = ["<unk>", "<s>", "</s>"]
    vocab = {t: i for i, t in enumerate(specials + [f"<0x{b:02X}>" for b in range(256)])}
    for piece in sorted(learned["vocab"], key=learned["vocab"].get):
        vocab.setdefault(piece, len(vocab))
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = metaspace
    tok.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.add_special_tokens(specials)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def tiny_llama_with(
    tokenizer, path: Path, *, extra_files: dict[str, Path] | None = None, seed: int = 0
) -> Path:
    """A random 2-layer Llama whose vocabulary is `tokenizer`'s, saved with it (and `extra_files`) in `path`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    for name, source in (extra_files or {}).items():
        shutil.copyfile(source, path / name)
    return path
