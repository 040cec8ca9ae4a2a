"""SentencePiece-style vocabularies (Llama 2, Mistral 7B v0.1, Gemma, Phi-3) as llama.cpp's `llama` tokenizer
model: token pieces with `▁` for spaces, a score per token, token types (normal, control, byte, ...).

Two sources, as llama.cpp's converter reads them (convert_hf_to_gguf.py, conversion/base.py):
- `tokenizer.model` (the SentencePiece model itself; `_set_vocab_sentencepiece`): pieces, scores and types from
  the `sentencepiece` library, added tokens from added_tokens.json and tokenizer_config.json.
- `tokenizer.json` alone, a BPE with byte fallback (`_set_vocab_llama_hf`). llama.cpp's `llama` tokenizer
  merges adjacent symbols by the highest score, so the scores must order the merges: a token made by merge k
  scores -k here (the converter's constant -1000 would merge left to right instead of in BPE's order).

What llama.cpp does with spaces is settled from the tokenizer.json: `▁` for every space (a Metaspace step or
a Replace normalizer) and a `▁` before the text (`add_space_prefix`) when the tokenizer prepends one; other
normalizers (lowercasing, NFKC, ...) are refused, as llama.cpp has none of them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import gguf

from greenlm.errors import GreenlmError

SPACE = "\u2581"  # ▁, SentencePiece's visible space
_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def is_sentencepiece_style(tokenizer_json: dict) -> bool:
    model = tokenizer_json.get("model") or {}
    return model.get("type") == "BPE" and bool(model.get("byte_fallback"))


def _is_replace_space(step: dict) -> bool:
    return (
        step.get("type") == "Replace"
        and (step.get("pattern") or {}).get("String") == " "
        and (step.get("content") == SPACE)
    )


def _is_prepend_space(step: dict) -> bool:
    return step.get("type") == "Prepend" and step.get("prepend") == SPACE


def space_handling(tokenizer_json: dict, tokens: list[str]) -> bool:
    """Whether llama.cpp should prepend a space (`add_space_prefix`), or a GreenlmError naming what we saw."""
    normalizer = tokenizer_json.get("normalizer")
    pre = tokenizer_json.get("pre_tokenizer")
    norm_steps = (
        []
        if normalizer is None
        else normalizer.get("normalizers", [])
        if normalizer.get("type") == "Sequence"
        else [normalizer]
    )
    pre_steps = (
        [] if pre is None else pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    )
    described = (
        f"normalizer {' + '.join(str(s.get('type')) for s in norm_steps) or 'none'}, pre-tokenizer "
        f"{' + '.join(str(s.get('type')) for s in pre_steps) or 'none'}"
    )
    refuse = GreenlmError(
        f"the SentencePiece-style tokenizer's {described} is not one the GGUF exporter maps to llama.cpp (spaces "
        "as ▁ by a Metaspace pre-tokenizer or a Replace normalizer, optionally a prepended ▁): this tokenizer "
        "cannot be exported"
    )
    if not norm_steps and len(pre_steps) == 1 and pre_steps[0].get("type") == "Metaspace":
        meta = pre_steps[0]
        if meta.get("replacement") != SPACE:
            raise refuse
        # a split Metaspace cuts text at every ▁, which llama.cpp does not: only harmless if no piece has a ▁
        # past its first character
        if meta.get("split", True) and any(SPACE in t[1:] for t in tokens):
            raise refuse
        return meta.get("prepend_scheme", "always") != "never"
    # the classic form: normalizers turn spaces into ▁ (and maybe prepend one); a Split on " " after them
    # finds no space left, so it changes nothing
    kinds = [(_is_prepend_space(s), _is_replace_space(s)) for s in norm_steps]
    inert_split = all(
        s.get("type") == "Split" and (s.get("pattern") or {}).get("String") == " " for s in pre_steps
    )
    if kinds == [(False, True)] and inert_split:
        return False
    if kinds == [(True, False), (False, True)] and inert_split:
        return True
    raise refuse


def _merge_scores(model: dict, vocab: dict[str, int]) -> dict[int, float]:
    """Token id -> -k for the token merge k makes (the first merge making it)."""
    scores: dict[int, float] = {}
    for rank, merge in enumerate(model.get("merges") or []):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        tid = vocab.get(left + right)
        if tid is not None and tid not in scores:
            scores[tid] = -float(rank)
    return scores


def hf_json_vocab(tokenizer_json: dict, vocab_size: int):
    """(tokens, scores, types, add_space_prefix) from a byte-fallback BPE tokenizer.json."""
    model = tokenizer_json["model"]
    vocab: dict[str, int] = model.get("vocab") or {}
    added = [a for a in tokenizer_json.get("added_tokens", []) if isinstance(a.get("id"), int)]
    size = max([*vocab.values(), *(a["id"] for a in added), -1]) + 1
    if size > vocab_size:
        raise GreenlmError(
            f"the tokenizer has {size} tokens but the model's embedding only {vocab_size} rows: the model and "
            "tokenizer do not belong together"
        )
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [int(gguf.TokenType.UNUSED)] * vocab_size
    merge_scores = _merge_scores(model, vocab)
    # tokens no merge makes (single characters, bytes, specials) are never a merge's result: below every merge
    floor = -float(len(model.get("merges") or []))
    scores = [floor] * vocab_size
    unk = model.get("unk_token")
    for text, tid in vocab.items():
        tokens[tid] = text
        scores[tid] = merge_scores.get(tid, floor)
        if _BYTE_TOKEN.fullmatch(text):
            types[tid] = int(gguf.TokenType.BYTE)
        elif text == unk:
            types[tid] = int(gguf.TokenType.UNKNOWN)
        else:
            types[tid] = int(gguf.TokenType.NORMAL)
    for a in added:
        tid, text = a["id"], str(a.get("content", ""))
        if a.get("special"):
            types[tid] = int(gguf.TokenType.CONTROL)
        else:
            text = text.replace(
                SPACE, " "
            )  # as the converter: llama.cpp matches user-defined tokens on raw text
            types[tid] = int(gguf.TokenType.USER_DEFINED)
        tokens[tid] = text
        scores[tid] = -1000.0
    add_space_prefix = space_handling(tokenizer_json, list(vocab))
    return [t.encode("utf-8") for t in tokens], scores, types, add_space_prefix


def sentencepiece_model_vocab(tokenizer_dir: Path, vocab_size: int):
    """(tokens, scores, types) from `tokenizer_dir`/tokenizer.model, as `_create_vocab_sentencepiece` reads it."""
    from sentencepiece import SentencePieceProcessor

    processor = SentencePieceProcessor()
    processor.LoadFromFile(str(tokenizer_dir / "tokenizer.model"))
    if processor.vocab_size() > vocab_size:
        raise GreenlmError(
            f"the tokenizer has {processor.vocab_size()} tokens but the model's embedding only {vocab_size} rows: "
            "the model and tokenizer do not belong together"
        )
    tokens = [f"[PAD{i}]".encode() for i in range(vocab_size)]
    scores = [-10000.0] * vocab_size
    types = [int(gguf.TokenType.UNUSED)] * vocab_size
    for tid in range(processor.vocab_size()):
        kind = gguf.TokenType.NORMAL
        if processor.IsUnknown(tid):
            kind = gguf.TokenType.UNKNOWN
        elif processor.IsControl(tid):
            kind = gguf.TokenType.CONTROL
        elif processor.IsUnused(tid):
            kind = gguf.TokenType.UNUSED
        elif processor.IsByte(tid):
            kind = gguf.TokenType.BYTE
        tokens[tid] = processor.IdToPiece(tid).encode("utf-8")
        scores[tid] = processor.GetScore(tid)
        types[tid] = int(kind)
    added_file = tokenizer_dir / "added_tokens.json"
    if added_file.is_file():
        for text, tid in json.loads(added_file.read_text(encoding="utf-8")).items():
            if 0 <= int(tid) < vocab_size:
                tokens[tid], scores[tid], types[tid] = (
                    text.encode(),
                    -1000.0,
                    int(gguf.TokenType.USER_DEFINED),
                )
    config_file = tokenizer_dir / "tokenizer_config.json"
    if config_file.is_file():
        decoder = json.loads(config_file.read_text(encoding="utf-8")).get("added_tokens_decoder", {})
        for key, data in decoder.items():
            tid, text = int(key), str(data["content"])
            if not 0 <= tid < vocab_size:
                continue
            if data.get("special"):
                types[tid] = int(gguf.TokenType.CONTROL)
            else:
                text = text.replace(SPACE, " ")
                types[tid] = int(gguf.TokenType.USER_DEFINED)
            tokens[tid], scores[tid] = text.encode("utf-8"), -1000.0
    return tokens, scores, types


def has_sentencepiece() -> bool:
    import importlib.util

    return importlib.util.find_spec("sentencepiece") is not None
