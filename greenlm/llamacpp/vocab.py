"""The tokenizer half of a GGUF file, written as llama.cpp's converter writes it.

- Byte-level BPE (GPT-2 style: SmolLM2, Qwen2, Llama 3): `gguf.BpeVocab` reads the token list,
  `gguf.SpecialVocab` the merges and special-token ids. What they leave to the caller we settle here: which
  llama.cpp pre-tokenizer reproduces the Hugging Face one (llama.cpp keys its split regex by name), and which
  tokens are control tokens.
- SentencePiece style (Llama 2, Mistral 7B v0.1, Gemma, Phi-3): llama.cpp's `llama` tokenizer model with
  scores and token types, from tokenizer.model when there is one, else from a byte-fallback BPE tokenizer.json
  (vocab_spm.py).
- A model given as a GGUF file keeps the file's own tokenizer keys, copied unchanged (vocab_copy.py).

Only structures we can name exactly are accepted; `verify_tokenizer` then checks on real text that llama.cpp
splits it as Hugging Face does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import gguf

from greenlm.errors import GreenlmError
from greenlm.llamacpp.vocab_spm import (
    has_sentencepiece,
    hf_json_vocab,
    is_sentencepiece_style,
    sentencepiece_model_vocab,
)

# Text that exercises what pre-tokenizers disagree on: digits, contractions, spaces, punctuation, unicode.
PROBE_TEXT = (
    "In 2024, greenlm's 135M model ran at 66.5 tokens/s -- isn't that fast?\n\n"
    "  def f(x):\n      return x**2 + 1_000  # café naïve 東京 🙂\n"
    "They'll say it's 3.14159; we'd say: 'maybe'!"
)


@dataclass
class GgufVocab:
    tokenizer_model: str  # "gpt2": byte-level BPE; "llama": SentencePiece style
    pre: str  # llama.cpp pre-tokenizer name ("default" for SentencePiece style)
    tokens: list[bytes]
    token_types: list[int]
    special: object  # gguf.SpecialVocab: merges, special ids, add_bos/add_eos, chat template
    scores: list[float] | None = None  # SentencePiece style: llama.cpp merges by the highest score
    add_space_prefix: bool | None = None  # SentencePiece style: a ▁ before the text
    source: str = "tokenizer.json"  # what the vocabulary was read from

    def add_to(self, writer) -> None:
        writer.add_tokenizer_model(self.tokenizer_model)
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        if self.scores is not None:
            writer.add_token_scores(self.scores)
        writer.add_token_types(self.token_types)
        if self.add_space_prefix is not None:
            writer.add_add_space_prefix(self.add_space_prefix)
        self.special.add_to_gguf(writer, quiet=True)


# Split regexes of byte-level BPE tokenizers (applied before a regex-free ByteLevel step), and the llama.cpp
# pre-tokenizer that splits the same way. The exporter checks on real text that they agree (verify.py).
_SPLIT_REGEXES = {
    # Qwen2 / Qwen2.5 / Qwen3: single digits
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "qwen2",
    # Llama 3: digits in threes
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "llama-bpe",
}


def _pre_tokenizer_name(tokenizer_json: dict) -> str:
    """The llama.cpp pre-tokenizer equivalent to this tokenizer.json's, or a GreenlmError naming what we saw."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    byte_level = steps[-1] if steps and kinds[-1] == "ByteLevel" else None
    if byte_level is not None and not byte_level.get("add_prefix_space"):
        if byte_level.get("use_regex", True):
            if kinds == ["ByteLevel"]:
                return "gpt-2"  # GPT-2's split regex
            if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits"):
                return "smollm"  # every digit alone, then GPT-2's regex
        elif kinds == ["Split", "ByteLevel"] and steps[0].get("behavior") == "Isolated":
            regex = (steps[0].get("pattern") or {}).get("Regex")
            if regex in _SPLIT_REGEXES and not steps[0].get("invert"):
                return _SPLIT_REGEXES[regex]
    raise GreenlmError(
        f"the tokenizer's pre-tokenizer ({' + '.join(str(k) for k in kinds) or 'none'}) is not one the GGUF "
        "exporter maps to llama.cpp (byte-level BPE with GPT-2's split, optionally single digits first, or "
        "Qwen2's or Llama 3's split regex): "
        "this tokenizer cannot be exported"
    )


def build_vocab(tokenizer_dir: Path, vocab_size: int) -> GgufVocab:
    """Vocabulary of the tokenizer saved in `tokenizer_dir`, padded to the model's `vocab_size` rows."""
    path = tokenizer_dir / "tokenizer.json"
    try:
        tokenizer_json = json.loads(path.read_text(encoding="utf-8"))
        model = tokenizer_json["model"]
    except (OSError, ValueError, KeyError) as exc:
        raise GreenlmError(
            f"no usable tokenizer.json in {tokenizer_dir} ({exc}): the GGUF exporter needs a fast (tokenizers) "
            "tokenizer"
        ) from None
    if is_sentencepiece_style(tokenizer_json):
        return _sentencepiece_vocab(tokenizer_dir, tokenizer_json, vocab_size)
    if model.get("type") != "BPE" or (tokenizer_json.get("decoder") or {}).get("type") != "ByteLevel":
        raise GreenlmError(
            f"the tokenizer in {tokenizer_dir} is {model.get('type')} with a "
            f"{(tokenizer_json.get('decoder') or {}).get('type')} decoder; the GGUF exporter writes byte-level "
            "BPE tokenizers (GPT-2 style) and SentencePiece-style BPE with byte fallback (Llama 2 style) only"
        )
    pre = _pre_tokenizer_name(tokenizer_json)
    try:
        bpe = gguf.BpeVocab(tokenizer_dir)
    except (ValueError, FileNotFoundError) as exc:
        raise GreenlmError(f"cannot read the tokenizer in {tokenizer_dir}: {exc}") from None
    entries = list(bpe.all_tokens())
    if len(entries) > vocab_size:
        raise GreenlmError(
            f"the tokenizer has {len(entries)} tokens but the model's embedding only {vocab_size} rows: "
            "the model and tokenizer do not belong together"
        )
    tokens = [text if isinstance(text, bytes) else str(text).encode() for text, _score, _type in entries]
    types = [int(t) for _text, _score, t in entries]
    # BpeVocab types every token of the base vocabulary NORMAL, including special tokens trained into it.
    for added in tokenizer_json.get("added_tokens", []):
        tid = added.get("id")
        if isinstance(tid, int) and 0 <= tid < len(types):
            types[tid] = int(gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED)
    for i in range(len(tokens), vocab_size):  # embedding rows past the tokenizer: never produced by it
        tokens.append(f"[PAD{i}]".encode())
        types.append(int(gguf.TokenType.UNUSED))
    special = gguf.SpecialVocab(tokenizer_dir, load_merges=True, n_vocab=vocab_size)
    if not special.merges:
        raise GreenlmError(f"the tokenizer in {tokenizer_dir} has no BPE merges: it cannot be exported")
    return GgufVocab("gpt2", pre, tokens, types, special)


def _sentencepiece_vocab(tokenizer_dir: Path, tokenizer_json: dict, vocab_size: int) -> GgufVocab:
    """llama.cpp's `llama` tokenizer model: from tokenizer.model when it is there and `sentencepiece` can read
    it (the converter's first choice), else from the byte-fallback BPE in tokenizer.json."""
    tokens_json, scores, types, add_space_prefix = hf_json_vocab(tokenizer_json, vocab_size)
    tokens, source = tokens_json, "tokenizer.json (byte-fallback BPE; scores from the merge order)"
    if (tokenizer_dir / "tokenizer.model").is_file() and has_sentencepiece():
        tokens, scores, types = sentencepiece_model_vocab(tokenizer_dir, vocab_size)
        source = "tokenizer.model (SentencePiece)"
    special = gguf.SpecialVocab(tokenizer_dir, load_merges=False, n_vocab=vocab_size)
    return GgufVocab("llama", "default", tokens, types, special, scores, add_space_prefix, source)
