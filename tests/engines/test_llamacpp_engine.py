"""The llama.cpp engine behind the common interface: tokenization, batched prefill/decode, logits, errors."""

from __future__ import annotations

import pytest

from greenlm.errors import GreenlmError
from tests.helpers import export_gguf, needs_llamacpp, sample_ids

pytestmark = needs_llamacpp


@pytest.fixture(scope="module")
def tiny(tiny_model_dir, tmp_path_factory):
    """(llama.cpp engine on a float32 GGUF of the tiny model, transformers engine on the same model)."""
    from greenlm.engines import create_engine
    from greenlm.engines.llamacpp_engine import LlamaCppEngine
    from greenlm.models import resolve_model

    path = export_gguf(tiny_model_dir, tmp_path_factory.mktemp("engine") / "tiny.gguf").out
    lcpp = LlamaCppEngine(path, model_name="tiny", threads=1)
    hf = create_engine("transformers", resolve_model(str(tiny_model_dir)))
    yield lcpp, hf
    lcpp.close()
    hf.close()


def test_tokenizes_like_transformers(tiny):
    lcpp, hf = tiny
    from tests.helpers import SAMPLE_TEXT

    ids = lcpp.tokenize(SAMPLE_TEXT)
    assert ids == hf.tokenize(SAMPLE_TEXT)
    assert lcpp.detokenize(ids) == SAMPLE_TEXT


def test_greedy_generation_matches_transformers_in_a_batch(tiny):
    lcpp, hf = tiny
    ids = sample_ids(hf.tokenizer)
    prompts = [ids[:12], ids[20:27], ids[5:30]]  # different lengths: parallel sequences, no padding
    ours = lcpp.decode(lcpp.prefill(prompts), 10)
    theirs = hf.decode(hf.prefill(prompts), 10)
    assert ours.token_ids == theirs.token_ids
    assert ours.decode_tokens == 30 and ours.steps == 10
    assert all(len(t) == 11 for t in ours.token_ids)


def test_a_batch_gives_what_each_prompt_gives_alone(tiny):
    lcpp, hf = tiny
    ids = sample_ids(hf.tokenizer)
    prompts = [ids[:9], ids[9:25]]
    batched = lcpp.decode(lcpp.prefill(prompts), 6).token_ids
    alone = [lcpp.decode(lcpp.prefill([p]), 6).token_ids[0] for p in prompts]
    assert batched == alone


def test_prefill_counts_real_prompt_tokens(tiny):
    lcpp, hf = tiny
    ids = sample_ids(hf.tokenizer)
    assert lcpp.prefill([ids[:5], ids[:8]]).prompt_tokens == 13


def test_logits_shape_and_vocabulary(tiny):
    lcpp, hf = tiny
    ids = sample_ids(hf.tokenizer)
    logits = lcpp.logits([ids[:16], ids[16:32]])
    assert tuple(logits.shape) == (2, 16, len(hf.tokenizer))
    assert str(logits.dtype) == "torch.float32"
    # A window gives the same logits whatever ran before it: each starts from an empty cache.
    assert (lcpp.logits([ids[16:32]])[0] - logits[1]).abs().max() < 1e-5


def test_stale_prefill_is_refused(tiny):
    lcpp, hf = tiny
    ids = sample_ids(hf.tokenizer)
    pre = lcpp.prefill([ids[:6]])
    lcpp.decode(pre, 2)
    with pytest.raises(GreenlmError, match="prefill again"):
        lcpp.decode(pre, 2)


def test_bad_inputs(tiny):
    lcpp, _hf = tiny
    with pytest.raises(GreenlmError, match="at least one token"):
        lcpp.prefill([[1, 2], []])
    with pytest.raises(GreenlmError, match="outside tiny's vocabulary"):
        lcpp.logits([[1, 2, 10_000]])
    with pytest.raises(GreenlmError, match="equal length"):
        lcpp.logits([[1, 2], [1]])
    with pytest.raises(GreenlmError, match="exceed the llama.cpp context"):
        lcpp.decode(lcpp.prefill([[1, 2, 3]]), lcpp.max_context)


def test_threads_are_a_parameter_and_reported(tiny):
    lcpp, _hf = tiny
    info = lcpp.describe()
    assert lcpp.threads == 1 and info["threads"] == 1
    assert info["engine"] == "llamacpp" and info["quant_type"] == "f32"
    assert info["tensor_types"]["f32"] > 0 and info["file_mb"] > 0
    assert "parallel sequences" in info["batching"]
    with pytest.raises(GreenlmError, match="--threads must be at least 1"):
        type(lcpp)(lcpp.path, model_name="x", threads=0)


def test_hf_directory_is_exported_once_to_the_cache(tiny_model_dir):
    """`--engine llamacpp` on a Hugging Face directory: a float GGUF is made in the cache, then reused."""
    from greenlm.engines import create_engine
    from greenlm.models import resolve_model

    spec = resolve_model(str(tiny_model_dir))
    first = create_engine("llamacpp", spec)
    second = create_engine("llamacpp", spec)
    try:
        assert first.describe()["load_source"] in ("exported-f32-gguf", "cache-f32-gguf")
        assert second.describe()["load_source"] == "cache-f32-gguf"
        assert first.path == second.path and first.path.suffix == ".gguf"
    finally:
        first.close()
        second.close()


def test_gpu_device_follows_the_build(tiny):
    """--device cuda runs on the GPU with a GPU build of llama-cpp-python, and is refused in one line without."""
    lcpp, _hf = tiny
    if lcpp.lib.llama_supports_gpu_offload():
        gpu = type(lcpp)(lcpp.path, model_name="x", device="cuda")
        try:
            assert gpu.device == "gpu" and gpu.describe()["device"] == "gpu"
        finally:
            gpu.close()
    else:
        with pytest.raises(GreenlmError, match="no GPU offload"):
            type(lcpp)(lcpp.path, model_name="x", device="cuda")
    auto = type(lcpp)(lcpp.path, model_name="x", device="auto")
    try:
        assert auto.device == ("gpu" if lcpp.lib.llama_supports_gpu_offload() else "cpu")
    finally:
        auto.close()


def test_measure_through_llamacpp_adds_quant_type_and_file_size(tiny_model_dir, tmp_path):
    from greenlm.energy.settings import EnergySettings
    from greenlm.workload import MeasureConfig, run_measure

    gguf = export_gguf(tiny_model_dir, tmp_path / "tiny-q8_0.gguf", quant="q8_0").out
    result = run_measure(
        MeasureConfig(
            model=gguf,
            engine="llamacpp",
            num_prompts=2,
            prompt_tokens=16,
            max_new_tokens=8,
            repeats=1,
            threads=1,
            energy=EnergySettings(meter="cpu-model"),
        )
    )
    row = result.to_dict()
    assert row["engine"] == "llamacpp" and row["quant_type"] == "q8_0"
    assert row["file_mb"] == pytest.approx(result.engine_details["file_mb"])
    assert row["threads"] == 1 and row["decode_tokens_per_s"] > 0
    assert row["per_repeat"][0]["decode_tokens"] == 2 * 7
