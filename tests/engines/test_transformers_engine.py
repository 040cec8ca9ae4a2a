import pytest
import torch

from greenlm.engines import create_engine
from greenlm.errors import GreenlmError
from greenlm.models import resolve_model


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return create_engine("transformers", resolve_model(str(tiny_model_dir)), threads=1)


def test_prefill_then_decode_matches_hf_generate(engine):
    prompt = engine.tokenize("def main(): return the value of")
    pre = engine.prefill([prompt])
    dec = engine.decode(pre, 7)
    ref = engine.model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False, min_new_tokens=8)
    assert dec.token_ids[0] == ref[0, len(prompt) :].tolist()
    assert dec.decode_tokens == 7 and dec.steps == 7 and pre.prompt_tokens == len(prompt)


def test_left_padded_batch_matches_single_sequences(engine):
    prompts = [
        engine.tokenize("a short one"),
        engine.tokenize("a much longer prompt with many more tokens in it"),
    ]
    batch = engine.decode(engine.prefill(prompts), 5).token_ids
    singles = [engine.decode(engine.prefill([p]), 5).token_ids[0] for p in prompts]
    assert batch == singles
    assert engine.prefill(prompts).prompt_tokens == sum(len(p) for p in prompts)  # padding not counted


def test_logits_shape_and_agreement_with_prefill(engine):
    ids = engine.tokenize("for loop in range")
    logits = engine.logits([ids])
    assert logits.shape == (1, len(ids), engine.model.config.vocab_size) and logits.dtype == torch.float32
    assert int(logits[0, -1].argmax()) == engine.prefill([ids]).next_token_ids[0]


def test_describe_reports_threads_and_engine(engine):
    info = engine.describe()
    assert info["engine"] == "transformers" and info["threads"] == 1 and info["device"] == "cpu"


def test_empty_prompt_rejected(engine):
    with pytest.raises(GreenlmError, match="at least one token"):
        engine.prefill([[]])


def test_unknown_engine(tiny_model_dir):
    with pytest.raises(GreenlmError, match="unknown engine"):
        create_engine("vllm", resolve_model(str(tiny_model_dir)))


def test_cuda_without_gpu_is_clear(tiny_model_dir):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(GreenlmError, match="no CUDA GPU"):
        create_engine("transformers", resolve_model(str(tiny_model_dir)), device="cuda")


def test_auto_keeps_a_model_with_cpu_only_kernels_on_the_cpu(tiny_model_dir, monkeypatch):
    """--device auto on a GPU machine (patched: torch sees CUDA) with a variant whose quantized kernels are CPU
    ops: the model stays on the CPU and says why; asking for cuda explicitly is refused before any work."""
    from greenlm.engines import transformers_engine as te
    from greenlm.kernels.linear import QuantLinear

    assert QuantLinear.cpu_only

    class CpuKernel(torch.nn.Module):
        cpu_only = True

    real_load = te.load_model

    def load_with_kernel(spec, **kwargs):
        loaded = real_load(spec, **kwargs)
        loaded.model.model.extra = CpuKernel()
        return loaded

    monkeypatch.setattr(te, "load_model", load_with_kernel)
    monkeypatch.setattr(te, "resolve_device", lambda device: "cpu" if device == "cpu" else "cuda")
    spec = resolve_model(str(tiny_model_dir))
    engine = te.TransformersEngine.load(spec, device="auto")
    try:
        assert engine.device == "cpu"
        assert engine.describe()["device_choice"] == "auto: cpu (CpuKernel kernels run on the CPU only)"
    finally:
        engine.close()
    with pytest.raises(GreenlmError, match=r"run on the CPU only \(CpuKernel\): use --device cpu"):
        te.TransformersEngine.load(spec, device="cuda")


def test_auto_on_a_machine_without_cuda_is_the_cpu(tiny_model_dir):
    engine = create_engine("transformers", resolve_model(str(tiny_model_dir)), device="auto")
    try:
        assert engine.device == "cpu" and engine.describe()["device_choice"] == "auto: cpu"
    finally:
        engine.close()
