"""SentencePiece-style vocabularies (Llama 2, Mistral 7B v0.1, Gemma, Phi-3) written as llama.cpp's `llama`
tokenizer model, and a GGUF input's own tokenizer carried through unchanged: on tiny models with tokenizers made
here, llama.cpp must give a probe text (spaces, digits, non-ASCII, byte fallback) the source tokenizer's ids."""

from __future__ import annotations

import importlib.util

import gguf
import pytest

from greenlm.errors import GreenlmError
from tests.export.spm_tokenizers import (
    PROBE,
    byte_fallback_bpe,
    llama_tokenizer_from_model,
    sentencepiece_model,
    tiny_llama_with,
)
from tests.helpers import assert_roundtrip, export_gguf, hf_logits, needs_llamacpp

needs_sentencepiece = pytest.mark.skipif(
    importlib.util.find_spec("sentencepiece") is None,
    reason="sentencepiece is not installed (the dev extra installs it)",
)


def _fields(path) -> dict[str, tuple]:
    """Every tokenizer.* key of a GGUF file as its value types and raw bytes."""
    reader = gguf.GGUFReader(str(path))
    return {
        k: (tuple(f.types), [bytes(p.tobytes()) for p in f.parts])
        for k, f in reader.fields.items()
        if k.startswith("tokenizer.")
    }


def _string(path, key) -> str:
    return gguf.GGUFReader(str(path)).fields[key].contents()


def _llama_ids(path, text=PROBE) -> list[int]:
    from greenlm.llamacpp.verify import llama_tokenize

    return llama_tokenize(path, text)


def _byte_ids(path) -> set[int]:
    types = gguf.GGUFReader(str(path)).fields["tokenizer.ggml.token_type"].contents()
    return {i for i, t in enumerate(types) if t == gguf.TokenType.BYTE}


@pytest.fixture(scope="module")
def spm_model_dir(tmp_path_factory):
    """A tiny Llama with a SentencePiece tokenizer.model beside its tokenizer.json, as Llama 2 ships."""
    if importlib.util.find_spec("sentencepiece") is None:
        pytest.skip("sentencepiece is not installed (the dev extra installs it)")
    root = tmp_path_factory.mktemp("spm")
    model_file = sentencepiece_model(root / "sp")
    tokenizer = llama_tokenizer_from_model(model_file, root / "tok")
    return tiny_llama_with(tokenizer, root / "model", extra_files={"tokenizer.model": model_file})


@pytest.fixture(scope="module")
def spm_gguf(spm_model_dir, tmp_path_factory):
    return export_gguf(spm_model_dir, tmp_path_factory.mktemp("spm-gguf") / "spm-f32.gguf", quant="f32")


@needs_llamacpp
@needs_sentencepiece
def test_a_sentencepiece_model_exports_with_its_scores_and_tokenizes_as_the_source(spm_model_dir, spm_gguf):
    import sentencepiece as spm
    from transformers import AutoTokenizer

    from greenlm.models import load_model, resolve_model

    processor = spm.SentencePieceProcessor(model_file=str(spm_model_dir / "tokenizer.model"))
    expected = processor.encode(PROBE)
    hf = AutoTokenizer.from_pretrained(spm_model_dir)
    assert hf(PROBE, add_special_tokens=False)["input_ids"] == expected
    assert _llama_ids(spm_gguf.out) == expected
    assert _byte_ids(spm_gguf.out) & set(expected)  # the probe went through byte fallback
    assert _string(spm_gguf.out, "tokenizer.ggml.model") == "llama"
    scores = gguf.GGUFReader(str(spm_gguf.out)).fields["tokenizer.ggml.scores"].contents()
    assert scores[:400] == pytest.approx([processor.GetScore(i) for i in range(400)])
    assert any("from tokenizer.model (SentencePiece)" in n for n in spm_gguf.notes)
    # and the model itself runs in llama.cpp as in transformers
    from greenlm.engines.llamacpp_engine import LlamaCppEngine
    from greenlm.llamacpp.verify import ROUNDTRIP_TINY

    loaded = load_model(resolve_model(str(spm_model_dir)))
    engine = LlamaCppEngine(spm_gguf.out, model_name="spm")
    try:
        logits = engine.logits([expected])
    finally:
        engine.close()
    assert_roundtrip(hf_logits(loaded.model, [expected]), logits, ROUNDTRIP_TINY)


@needs_llamacpp
@pytest.mark.parametrize("prepend_scheme", ["first", "never"])
def test_a_byte_fallback_tokenizer_json_exports_and_tokenizes_as_the_source(prepend_scheme, tmp_path):
    """No tokenizer.model: the vocabulary comes from tokenizer.json, scores from the merge order; with and
    without the prepended ▁ (Llama 2's and Gemma's way)."""
    from tokenizers import pre_tokenizers

    tokenizer = byte_fallback_bpe()
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="\u2581", prepend_scheme=prepend_scheme, split=False
    )
    model_dir = tiny_llama_with(tokenizer, tmp_path / "model")
    result = export_gguf(model_dir, tmp_path / "m.gguf", quant="q8_0")
    expected = tokenizer(PROBE, add_special_tokens=False)["input_ids"]
    assert _llama_ids(result.out) == expected
    assert _byte_ids(result.out) & set(expected)
    reader = gguf.GGUFReader(str(result.out))
    assert bool(reader.fields["tokenizer.ggml.add_space_prefix"].contents()) is (prepend_scheme == "first")
    assert any("tokenizer.json (byte-fallback BPE" in n for n in result.notes)
    # plain left-to-right merging would split words otherwise: the merge order is in the scores
    assert len(set(reader.fields["tokenizer.ggml.scores"].contents())) > 100


@needs_llamacpp
@needs_sentencepiece
def test_a_gguf_input_keeps_its_own_tokenizer_keys(spm_model_dir, spm_gguf, tmp_path):
    again = export_gguf(spm_gguf.out, tmp_path / "again.gguf", quant="q8_0")
    assert _fields(again.out) == _fields(spm_gguf.out)
    assert any("the input GGUF's own tokenizer keys" in n for n in again.notes)
    import sentencepiece as spm

    processor = spm.SentencePieceProcessor(model_file=str(spm_model_dir / "tokenizer.model"))
    assert _llama_ids(again.out) == processor.encode(PROBE)


@needs_llamacpp
def test_a_byte_level_gguf_input_keeps_its_tokenizer_keys_too(tiny_gguf, tmp_path):
    again = export_gguf(tiny_gguf, tmp_path / "again.gguf", quant="f16")
    assert _fields(again.out) == _fields(tiny_gguf)
    assert _string(again.out, "tokenizer.ggml.model") == "gpt2"


def _tokenizer_json(normalizer=None, pre_tokenizer=None) -> dict:
    return {
        "model": {"type": "BPE", "byte_fallback": True, "vocab": {"<unk>": 0, "\u2581a": 1}, "merges": []},
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
    }


REPLACE = {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}
PREPEND = {"type": "Prepend", "prepend": "\u2581"}


@pytest.mark.parametrize(
    "normalizer, pre_tokenizer, prefix",
    [
        (
            None,
            {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": False},
            True,
        ),
        (
            None,
            {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "never", "split": False},
            False,
        ),
        ({"type": "Sequence", "normalizers": [PREPEND, REPLACE]}, None, True),  # Llama 2's tokenizer.json
        (
            REPLACE,
            {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious"},
            False,
        ),  # Gemma
    ],
)
def test_space_handling_of_the_known_layouts(normalizer, pre_tokenizer, prefix):
    from greenlm.llamacpp.vocab_spm import space_handling

    assert space_handling(_tokenizer_json(normalizer, pre_tokenizer), ["\u2581a"]) is prefix


@pytest.mark.parametrize(
    "normalizer, pre_tokenizer, tokens",
    [
        ({"type": "Sequence", "normalizers": [{"type": "Lowercase"}, REPLACE]}, None, ["a"]),
        (
            None,
            {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": True},
            ["a\u2581\u2581"],
        ),
        (None, {"type": "Whitespace"}, ["a"]),
    ],
)
def test_other_layouts_are_refused_in_one_line(normalizer, pre_tokenizer, tokens):
    from greenlm.llamacpp.vocab_spm import space_handling

    with pytest.raises(GreenlmError, match="cannot be exported"):
        space_handling(_tokenizer_json(normalizer, pre_tokenizer), tokens)


def test_a_unigram_tokenizer_is_refused_in_one_line(tmp_path):
    """llama.cpp's `llama` model merges by score, which is not a Unigram model's Viterbi split."""
    from tokenizers import Tokenizer, models

    from greenlm.llamacpp.vocab import build_vocab

    Tokenizer(models.Unigram([("<unk>", 0.0), ("a", -1.0)], unk_id=0)).save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(GreenlmError, match="is Unigram with a None decoder"):
        build_vocab(tmp_path, 2)
