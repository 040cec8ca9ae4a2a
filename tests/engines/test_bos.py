"""Tokenizer conventions: windows and prompts start with BOS when the model's tokenizer adds one, on both
engines alike, with the reference cache keyed on it; chat prompts go through the model's chat template."""

from __future__ import annotations

import hashlib
import json

import pytest

from greenlm.data import load_text, split_text
from greenlm.engines import create_engine
from greenlm.engines.bos import model_bos_token_id
from greenlm.errors import GreenlmError
from greenlm.evaluate.reference import FORMAT_VERSION, TAIL_SEED, reference_key, reference_stats
from greenlm.models import resolve_model
from greenlm.workload.prompts import encode_prompt, evaluation_prompts
from tests.helpers import SAMPLE_TEXT, build_tiny_model, export_gguf, needs_llamacpp

# ChatML, a template llama.cpp recognises too (llama_chat_apply_template), so both engines can render it.
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' "
    "+ '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is a context manager"}]
BOS = 1  # "<s>" in build_tiny_model's vocabulary


@pytest.fixture(scope="module")
def bos_model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny-bos"), add_bos=True, chat_template=CHATML)


def test_the_convention_comes_from_the_tokenizer(bos_model_dir, tiny_model_dir):
    assert model_bos_token_id(resolve_model(str(bos_model_dir))) == BOS
    assert model_bos_token_id(resolve_model(str(tiny_model_dir))) is None  # trained without a post-processor


def test_transformers_windows_and_prompts_start_with_bos(bos_model_dir, tiny_model_dir):
    spec = resolve_model(str(bos_model_dir))
    engine = create_engine("transformers", spec)
    try:
        assert engine.bos_token_id == BOS
        assert engine.tokenize("x = 1")[:1] != [BOS]  # plain tokenize adds nothing: the rule adds it once
        assert engine.with_bos([BOS, 5]) == [BOS, 5]
        prompts, _ = evaluation_prompts(engine, None, 3, 16)
        assert all(p[0] == BOS and len(p) == 16 for p in prompts)
        assert encode_prompt(engine, "hello there")[0] == BOS
    finally:
        engine.close()
    stats = reference_stats(spec, None, window_tokens=32, max_eval_tokens=96, top_k=4, tail_samples=2)
    assert stats.bos_token_id == BOS and stats.windows == 3
    assert stats.token_ids[:, 0].tolist() == [BOS] * 3 and stats.token_ids.shape[1] == 32
    # the text after BOS is the tokenized evaluation split, window_tokens - 1 tokens from each start
    text_ids = create_engine("transformers", spec).tokenize(split_text(load_text(None)).text("evaluation"))
    for start, window in zip(stats.starts, stats.token_ids.tolist(), strict=True):
        assert window[1:] == text_ids[start : start + 31]
    # a model without BOS: windows are plain slices of the text, as before
    plain = reference_stats(
        resolve_model(str(tiny_model_dir)),
        None,
        window_tokens=32,
        max_eval_tokens=96,
        top_k=4,
        tail_samples=2,
    )
    assert plain.bos_token_id is None and plain.token_ids.shape == (3, 32)


def test_reference_key_follows_bos_and_is_unchanged_without_it(bos_model_dir):
    spec = resolve_model(str(bos_model_dir))
    split = split_text(load_text(None))
    common = dict(
        engine="transformers",
        dtype="float32",
        device="cpu",
        window_tokens=512,
        max_eval_tokens=8192,
        top_k=128,
        tail_samples=64,
    )
    with_bos = reference_key(spec, split, **common, bos=BOS)
    without = reference_key(spec, split, **common)
    assert with_bos != without
    # a model without BOS (SmolLM2) keeps the key it had, so its cached statistics stay valid
    payload = {
        "format": FORMAT_VERSION,
        "model": spec.fingerprint(),
        "engine": "transformers",
        "dtype": "float32",
        "device": "cpu",
        "text": split.fingerprint,
        "eval_fraction": split.eval_fraction,
        "window_tokens": 512,
        "max_eval_tokens": 8192,
        "top_k": 128,
        "tail_samples": 64,
        "tail_seed": TAIL_SEED,
    }
    assert without == hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def test_transformers_chat_prompt_uses_the_template(bos_model_dir, tiny_model_dir):
    engine = create_engine("transformers", resolve_model(str(bos_model_dir)))
    try:
        ids = engine.chat_tokens(CHAT)
        text = engine.detokenize(ids[1:])
        assert ids[0] == BOS and ids[1] != BOS
        assert text == (
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is a context manager<|im_end|>\n"
            "<|im_start|>assistant\n"
        )
        assert encode_prompt(engine, CHAT) == ids
    finally:
        engine.close()
    plain = create_engine("transformers", resolve_model(str(tiny_model_dir)))
    try:
        with pytest.raises(GreenlmError, match="has no chat template"):
            plain.chat_tokens(CHAT)
    finally:
        plain.close()


@needs_llamacpp
def test_llamacpp_agrees_with_transformers(bos_model_dir, tmp_path):
    from greenlm.engines.llamacpp_engine import LlamaCppEngine

    # text both tokenizers split alike (the tiny vocabulary lacks some characters of the built-in corpus,
    # which the two libraries then drop differently)
    text = tmp_path / "sample.txt"
    text.write_text("\n\n".join([SAMPLE_TEXT] * 40))
    gguf = export_gguf(bos_model_dir, tmp_path / "bos.gguf").out
    # the exporter carries the convention into the GGUF, and llama.cpp's own rule reads it back
    assert model_bos_token_id(resolve_model(str(gguf))) == BOS
    raw = LlamaCppEngine(gguf, model_name="bos", threads=1)
    hf = create_engine("transformers", resolve_model(str(bos_model_dir)))
    lcpp = create_engine("llamacpp", resolve_model(str(bos_model_dir)), threads=1)
    try:
        assert raw.bos_token_id == lcpp.bos_token_id == hf.bos_token_id == BOS
        assert evaluation_prompts(lcpp, str(text), 3, 16) == evaluation_prompts(hf, str(text), 3, 16)
        assert encode_prompt(lcpp, "hello there") == encode_prompt(hf, "hello there")
        assert lcpp.chat_tokens(CHAT) == hf.chat_tokens(CHAT)
        assert lcpp.describe()["bos_token_id"] == BOS
    finally:
        for engine in (raw, hf, lcpp):
            engine.close()
    # llama.cpp windows for the reference are the same ids as transformers'
    spec = resolve_model(str(bos_model_dir))
    window = dict(window_tokens=32, max_eval_tokens=64, top_k=4, tail_samples=2)
    on_llamacpp = reference_stats(spec, str(text), engine="llamacpp", **window)
    on_transformers = reference_stats(spec, str(text), engine="transformers", **window)
    assert on_llamacpp.token_ids.tolist() == on_transformers.token_ids.tolist()
    assert on_llamacpp.token_ids[:, 0].tolist() == [BOS, BOS]
