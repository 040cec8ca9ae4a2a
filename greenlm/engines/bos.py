"""Whether a model's tokenizer starts sequences with BOS: decided once per model, for every engine alike.

Evaluation windows and workload prompts are cut from running text; a model whose tokenizer adds BOS
(Gemma, Llama 3, Mistral) saw BOS first in every training sequence, so each window starts with it, as
llama.cpp's perplexity tool does. Both engines take the convention from here, so a GGUF scored on
transformers and on llama.cpp is fed the same ids, and the reference-statistics cache is keyed on it.

* a GGUF: llama.cpp's rule, read from a vocabulary-only load (tokenizer.ggml.add_bos_token, else the
  default of its vocabulary type); without llama-cpp-python, the add_bos_token key itself (absent: none).
* a Hugging Face directory or variant: its tokenizer, asked whether it puts BOS first when special tokens
  are added (an `add_bos_token` setting and a post-processor template both count).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import gguf
from transformers import AutoTokenizer

from greenlm.errors import GreenlmError
from greenlm.llamacpp.runtime import import_llama_cpp, vocab_only_model
from greenlm.models.spec import ModelSpec


def tokenizer_bos_token_id(tokenizer) -> int | None:
    """The token a transformers tokenizer puts first when asked for special tokens, or None."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return None
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    return int(bos) if with_special[:1] == [bos] and plain[:1] != [bos] else None


def _gguf_bos(path: Path) -> int | None:
    try:
        lib = import_llama_cpp()
    except GreenlmError:  # no llama-cpp-python: the GGUF's own key
        fields = gguf.GGUFReader(str(path)).fields
        add = fields.get("tokenizer.ggml.add_bos_token")
        bos = fields.get("tokenizer.ggml.bos_token_id")
        return int(bos.contents()) if add is not None and add.contents() and bos is not None else None
    with vocab_only_model(lib, path) as model:
        vocab = lib.llama_model_get_vocab(model)
        return int(lib.llama_vocab_bos(vocab)) if lib.llama_vocab_get_add_bos(vocab) else None


def _dir_bos(path: Path) -> int | None:
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GreenlmError(f"cannot load the tokenizer of {path}: {first[:200]}") from None
    return tokenizer_bos_token_id(tokenizer)


@lru_cache(maxsize=32)
def _cached(path: str, is_gguf: bool, fingerprint: str) -> int | None:
    return _gguf_bos(Path(path)) if is_gguf else _dir_bos(Path(path))


def model_bos_token_id(spec: ModelSpec) -> int | None:
    """The BOS id every window and prompt of `spec` starts with, or None when its tokenizer adds none."""
    return _cached(str(spec.path), spec.is_gguf, spec.fingerprint())
