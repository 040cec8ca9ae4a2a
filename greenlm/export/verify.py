"""Check a written GGUF's tokenizer against the Hugging Face one it came from, through llama.cpp itself."""

from __future__ import annotations

from pathlib import Path

from greenlm.errors import GreenlmError
from greenlm.export.vocab import PROBE_TEXT


def llama_tokenize(path: Path, text: str) -> list[int]:
    """Token ids llama.cpp gives `text` with the vocabulary of GGUF `path` (loaded vocabulary-only)."""
    from greenlm.engines.llamacpp_runtime import captured_log, import_llama_cpp

    lib = import_llama_cpp()
    params = lib.llama_model_default_params()
    params.vocab_only = True
    with captured_log() as captured:
        model = lib.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        raise GreenlmError(f"llama.cpp cannot read the vocabulary of {path}: {captured.reason()}")
    try:
        vocab = lib.llama_model_get_vocab(model)
        data = text.encode("utf-8")
        size = len(data) + 16
        buf = (lib.llama_token * size)()
        n = lib.llama_tokenize(vocab, data, len(data), buf, size, False, False)
        return list(buf[: max(n, 0)])
    finally:
        lib.llama_model_free(model)


def check_tokenizer(path: Path, tokenizer, text: str = PROBE_TEXT) -> str:
    """Raise unless llama.cpp tokenizes `text` exactly as `tokenizer` does; return what was checked."""
    expected = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    got = llama_tokenize(path, text)
    if got != expected:
        at = next(
            (i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b),
            min(len(got), len(expected)),
        )
        raise GreenlmError(
            f"the exported tokenizer splits text differently in llama.cpp than in transformers (first difference "
            f"at token {at}: {got[at : at + 3]} vs {expected[at : at + 3]}): this tokenizer cannot be exported"
        )
    return f"llama.cpp and transformers agree on a {len(text)}-character probe ({len(got)} tokens)"
