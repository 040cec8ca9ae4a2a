"""Weight quantization: GPTQ and AWQ against round-to-nearest, which kernel path a step installs and its
real/simulated label, variant reloads, and config validation (the grid and the kernels themselves: tests/kernels)."""

from __future__ import annotations

import re

import pytest
import torch

from greenlm.compress import quant_common
from greenlm.compress.methods import apply_step
from greenlm.compress.pipeline import CompressConfig, compress
from greenlm.compress.quant_awq import AWQ
from greenlm.compress.quant_common import REAL_MIN_SPEEDUP
from greenlm.compress.quant_gptq import GPTQ
from greenlm.compress.quant_math import awq_search, gptq, output_error
from greenlm.compress.quant_rtn import RTN
from greenlm.compress.recipe import parse_step
from greenlm.errors import GreenlmError
from greenlm.kernels.linear import KERNELS, QuantLinear, available_kernels
from greenlm.kernels.quant_grid import GGUF_GRIDS, rtn
from greenlm.kernels.timing import FLOAT, KernelTiming
from greenlm.models import load_model, resolve_model
from tests.compress.tiny import CALIBRATION, context, load_tiny, logits, prompt_ids

# --- GPTQ and AWQ against round-to-nearest on toy layers ---------------------------------------------


def _correlated_inputs(seed: int, tokens: int = 512, columns: int = 64) -> torch.Tensor:
    """Inputs driven by 8 shared factors plus a little noise: strongly correlated channels, as in LLMs."""
    gen = torch.Generator().manual_seed(seed)
    latent = torch.randn(tokens, 8, generator=gen)
    mix = torch.randn(8, columns, generator=gen)
    return latent @ mix + 0.1 * torch.randn(tokens, columns, generator=gen)


def _true_output_error(x: torch.Tensor, w: torch.Tensor, w_hat: torch.Tensor) -> float:
    return float(((x.double() @ (w - w_hat).double().T) ** 2).sum())


def test_output_error_from_the_hessian_is_the_error_on_the_inputs():
    x = _correlated_inputs(0)
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(1))
    w_hat = rtn(w, 4, 32).dequantize()
    assert output_error(w, w_hat, x.T @ x) == pytest.approx(_true_output_error(x, w, w_hat), rel=1e-4)


@pytest.mark.parametrize("bits, group_size", [(4, 32), (3, 16), (4, None), (8, None)])
@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_gptq_beats_rtn_on_correlated_inputs(bits, group_size, act_order, seed):
    x = _correlated_inputs(seed)
    w = torch.randn(32, 64, generator=torch.Generator().manual_seed(100 + seed)) * 0.1
    h = x.T @ x
    rtn_error = output_error(w, rtn(w, bits, group_size).dequantize(), h)
    # block_size 16 < 64 columns: the lazy cross-block updates are exercised too
    result = gptq(w, h, bits=bits, group_size=group_size, block_size=16, act_order=act_order)
    gptq_error = output_error(w, result.weight.dequantize(), h)
    # measured: 0.02-0.15 of RTN's error on these layers
    assert gptq_error < 0.5 * rtn_error, gptq_error / rtn_error
    assert result.dead_columns == 0 and int(result.weight.q.max()) <= 2**bits - 1
    assert result.weight.scale.shape == (32, 64 // (group_size or 64))


def test_gptq_quantizes_dead_inputs_without_feedback():
    x = _correlated_inputs(0)
    x[:, 7] = 0.0  # an input never active on calibration text
    w = torch.randn(8, 64, generator=torch.Generator().manual_seed(0)) * 0.1
    result = gptq(w, x.T @ x, bits=4, group_size=32)
    assert result.dead_columns == 1
    assert torch.isfinite(result.weight.dequantize()).all()


def _outlier_inputs(seed: int, channels=(3, 17, 40)) -> torch.Tensor:
    x = torch.randn(512, 64, generator=torch.Generator().manual_seed(seed))
    x[:, list(channels)] *= 30.0  # a few input channels carry most of the activation magnitude
    return x


@pytest.mark.parametrize("bits, group_size", [(4, 32), (3, 16), (4, None)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_awq_is_no_worse_than_rtn_with_outlier_input_channels(bits, group_size, seed):
    x = _outlier_inputs(seed)
    w = torch.randn(32, 64, generator=torch.Generator().manual_seed(100 + seed)) * 0.1
    result = awq_search(w, x.abs().mean(0), x.T @ x, bits=bits, group_size=group_size)
    equivalent = result.weight.dequantize() / result.input_scale[None, :]
    awq_error = _true_output_error(x, w, equivalent)
    rtn_error = _true_output_error(x, w, rtn(w, bits, group_size).dequantize())
    assert awq_error <= rtn_error * (1 + 1e-6)
    assert result.error_unscaled == pytest.approx(rtn_error, rel=1e-4)
    # With outlier channels the scales really help (measured: 0.50-0.77 of RTN's error here).
    assert result.alpha > 0 and awq_error < 0.9 * rtn_error, awq_error / rtn_error
    # the outlier channels get the largest scales
    assert set(result.input_scale.topk(3).indices.tolist()) == {3, 17, 40}


def test_awq_falls_back_to_rtn_when_scaling_does_not_help():
    x = torch.randn(512, 64, generator=torch.Generator().manual_seed(0))  # no outliers at all
    w = torch.randn(32, 64, generator=torch.Generator().manual_seed(1)) * 0.1
    result = awq_search(w, x.abs().mean(0), x.T @ x, bits=4, group_size=32)
    assert result.error <= result.error_unscaled
    if result.alpha == 0:
        assert torch.equal(result.weight.q, rtn(w, 4, 32).q)


# --- install(): which path runs, and the real/simulated label ----------------------------------------


def _fake_timings(monkeypatch, speedups: dict[str, float], default: float = 0.5) -> dict:
    """Replace the compress-time kernel timing with fixed speed-ups; returns what it was asked to time."""
    seen: dict = {}

    def fake_time_stacks(stacks, *, tokens, rounds, dtype):
        seen["paths"], seen["tokens"] = list(stacks), tokens
        return [KernelTiming(n, speedups.get(n, default), [], tokens, rounds) for n in stacks if n != FLOAT]

    monkeypatch.setattr(quant_common, "time_stacks", fake_time_stacks)
    return seen


def _linears(model) -> dict[str, torch.nn.Module]:
    names = [f"model.layers.{i}.{p}" for i in range(2) for p in ("self_attn.q_proj", "mlp.down_proj")]
    return {n: model.get_submodule(n) for n in names}


def test_kernel_dense_is_simulated_and_keeps_plain_linears(tiny_model_dir, monkeypatch):
    seen = _fake_timings(monkeypatch, {})
    model, tok = load_tiny(tiny_model_dir)
    before = {n: m.weight.detach().clone() for n, m in _linears(model).items()}
    embed = model.model.embed_tokens.weight.detach().clone()
    report = apply_step(model, RTN(bits=4, group_size=32, kernel="dense"), context(tok))
    assert report.execution == "simulated" and seen == {}  # nothing timed: dense was asked for
    assert "kernel dense was asked for" in report.notes[0] and "quality only" in report.notes[0]
    assert report.details["kernel"] == "dense" and report.details["quantized_weight_bytes"] is None
    for name, module in _linears(model).items():
        assert type(module) is torch.nn.Linear
        # bits 4, groups of 32, symmetric: Q4_0's grid (gguf auto), its codes kept for export
        expected = rtn(before[name], 4, 32, gguf=GGUF_GRIDS["q4_0"])
        assert torch.equal(module.weight, expected.dequantize())
        assert torch.equal(report.codes[name].q, expected.q)
    assert torch.equal(model.model.embed_tokens.weight, embed)  # lm_head is skipped: the tied embedding stays


@pytest.mark.parametrize(
    "speedup, execution",
    [
        (REAL_MIN_SPEEDUP + 1.0, "real"),
        (REAL_MIN_SPEEDUP, "real"),
        (REAL_MIN_SPEEDUP - 0.01, "simulated"),
        (0.2, "simulated"),
    ],
)
def test_kernel_auto_is_real_only_when_measured_faster(tiny_model_dir, monkeypatch, speedup, execution):
    seen = _fake_timings(monkeypatch, {"int8_weight_f32": speedup})
    model, tok = load_tiny(tiny_model_dir)
    ids = prompt_ids(tok)
    report = apply_step(model, RTN(bits=8), context(tok))

    # auto times every weight-only kernel that takes int8 per channel, in batch-1 decode, never the
    # activation-quantizing or compiled ones
    candidates = [
        n
        for n in available_kernels()
        if KERNELS[n].auto and KERNELS[n].weight_only and KERNELS[n].check(8, None, True) is None
    ]
    assert seen["paths"] == [FLOAT, *candidates] and "int8_weight_f32" in candidates and seen["tokens"] == 1
    assert report.execution == execution
    timed = {t["kernel"]: t["speedup"] for t in report.details["kernel_timings"]}
    assert timed["int8_weight_f32"] == pytest.approx(speedup)
    modules = _linears(model).values()
    if execution == "real":
        assert report.details["kernel"] == "int8_weight_f32"
        assert report.details["kernel_speedup_vs_float32"] == pytest.approx(speedup, abs=1e-4)
        assert report.notes[0].startswith("real: runs on int8_weight_f32")
        assert all(isinstance(m, QuantLinear) and m.kernel == "int8_weight_f32" for m in modules)
        assert report.details["quantized_weight_bytes"] < report.details["float_weight_bytes"] / 3
    else:
        assert report.details["kernel"] == "dense"
        assert (
            report.notes[0].startswith("simulated:")
            and f"beat float32 by {REAL_MIN_SPEEDUP}x" in report.notes[0]
        )
        assert all(type(m) is torch.nn.Linear for m in modules)
    with torch.inference_mode():
        assert torch.isfinite(model(input_ids=ids).logits).all()


def test_a_named_kernel_is_kept_but_labelled_simulated_when_slower(tiny_model_dir, monkeypatch):
    _fake_timings(monkeypatch, {"int4_packed_f32": 0.4})
    model, tok = load_tiny(tiny_model_dir)
    report = apply_step(model, RTN(bits=4, group_size=32, kernel="int4_packed_f32"), context(tok))
    assert report.execution == "simulated"
    assert "was asked for and is kept" in report.notes[0] and "0.40x" in report.notes[0]
    assert all(m.kernel == "int4_packed_f32" for m in _linears(model).values())


def test_gptq_and_awq_steps_report_their_work(tiny_model_dir, monkeypatch):
    _fake_timings(monkeypatch, {})
    for step in (GPTQ(bits=4, group_size=32, kernel="dense"), AWQ(bits=4, group_size=32, kernel="dense")):
        model, tok = load_tiny(tiny_model_dir)
        report = apply_step(model, step, context(tok))
        assert report.execution == "simulated"
        assert report.details["layers_quantized"] == 14  # 2 layers x 7 linears; lm_head skipped
        assert (
            report.details["calibration_tokens"]
            == CALIBRATION["calibration_samples"] * CALIBRATION["calibration_tokens"]
        )
        if step.method == "awq":
            assert report.details["output_error"] <= report.details["output_error_without_scales"]
        else:
            assert report.details["gptq_loss"] > 0


# --- variants: saved, reloaded, identical ------------------------------------------------------------


def _make_variant(parent, out, step):
    return compress(
        CompressConfig(recipe=[step], out=str(out), model=str(parent), evaluate=False, **CALIBRATION)
    )


@pytest.mark.parametrize(
    "step",
    [
        RTN(bits=4, group_size=32, kernel="int4_packed_f32"),
        AWQ(bits=4, group_size=32, kernel="int4_packed_f32"),
        RTN(bits=8, kernel="int8_weight_bf16"),
    ],
    ids=["rtn-int4", "awq-int4", "rtn-int8-bf16"],
)
def test_low_bit_variant_reloads_through_greenlm_with_identical_logits(tiny_model_dir, tmp_path, step):
    out = tmp_path / "v"
    manifest = _make_variant(tiny_model_dir, out, step).manifest
    assert manifest.weights["plain_transformers"] is False
    modules = manifest.quantized_modules
    assert len(modules) == 14 and {m["spec"]["bits"] for m in modules.values()} == {step.bits}
    assert not (out / "model.safetensors").exists()  # plain transformers must not load it by mistake

    loaded = load_model(resolve_model(str(out)))
    assert loaded.load_source == "variant"
    down = loaded.model.model.layers[1].mlp.down_proj
    assert isinstance(down, QuantLinear) and down.kernel == step.kernel
    assert loaded.model.lm_head.weight.data_ptr() == loaded.model.model.embed_tokens.weight.data_ptr()

    fresh, tok = load_tiny(tiny_model_dir)  # the same step in memory: RTN and AWQ are deterministic
    apply_step(fresh, step, context(tok))
    ids = prompt_ids(tok)
    assert torch.equal(logits(loaded.model, ids), logits(fresh, ids))
    if step.method == "awq":
        scaled = manifest.steps[0]["details"]["layers_scaled"]
        assert scaled > 0  # the per-input-channel scales are saved and reloaded too
        assert sum(1 for m in modules.values() if m["spec"]["input_scale"]) == scaled


def test_dense_variant_also_loads_with_plain_transformers(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "v"
    result = _make_variant(tiny_model_dir, out, GPTQ(bits=4, group_size=32, kernel="dense"))
    assert result.execution == "simulated"
    assert result.manifest.weights["plain_transformers"] is True and result.manifest.quantized_modules == {}
    plain = AutoModelForCausalLM.from_pretrained(out).eval()
    loaded = load_model(resolve_model(str(out)))
    ids = prompt_ids(loaded.tokenizer)
    assert torch.equal(logits(plain, ids), logits(loaded.model, ids))
    # the stored floats lie on a 4-bit grid: at most 16 distinct values per group of 32
    w = plain.model.layers[1].mlp.up_proj.weight.detach()
    assert max(len(torch.unique(group)) for group in w.reshape(-1, 32)) <= 16


# --- config validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [RTN, GPTQ, AWQ])
@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(bits=9), "bits must be one of 8, 5, 4, 3, got 9"),
        (dict(bits=True), "bits must be one of"),
        (dict(bits=4, group_size=0), "group_size must be a whole number >= 1"),
        (dict(bits=4, group_size=True), "group_size must be a whole number >= 1"),
        (dict(bits=4, group_size=-32), "group_size must be a whole number >= 1"),
        (dict(kernel="int9_magic"), "unknown kernel 'int9_magic'"),
        (dict(bits=4, group_size=32, kernel="int8_weight_f32"), "kernel int8_weight_f32 cannot run"),
        (dict(bits=3, group_size=32, kernel="int4_packed_f32"), "it runs 4-bit weights only"),
        (dict(bits=4, group_size=16, kernel="int4_packed_f32"), "group size must be one of 32, 64"),
        (dict(symmetric="yes"), "symmetric must be true or false"),
        (dict(skip="lm_head"), "skip must be a list"),
    ],
)
def test_bad_settings_are_refused(cls, settings, message):
    with pytest.raises(GreenlmError, match=re.escape(message)):
        cls(**settings)


@pytest.mark.parametrize(
    "step, message",
    [
        ({"method": "rtn", "bits": 9}, "bits must be one of 8, 5, 4, 3"),
        ({"method": "gptq", "group_size": True}, "'group_size' must be a whole number or null"),
        ({"method": "awq", "group_size": 0}, "group_size must be a whole number >= 1"),
        ({"method": "rtn", "kernal": "dense"}, "unknown setting 'kernal' (did you mean 'kernel'?)"),
        ({"method": "gptq", "damp_percent": 0}, "damp_percent must be in (0, 1]"),
        ({"method": "awq", "grid": 1}, "grid must be a whole number >= 2"),
    ],
)
def test_bad_recipe_steps_are_one_line(step, message):
    with pytest.raises(GreenlmError) as info:
        parse_step(step, "recipe r.yaml, step 1")
    assert message in str(info.value) and "\n" not in str(info.value)
    assert str(info.value).startswith("recipe r.yaml, step 1")


@pytest.mark.parametrize("cls", [RTN, GPTQ, AWQ])
def test_group_size_that_does_not_divide_a_layer_fails_before_any_change(tiny_model_dir, cls):
    model, tok = load_tiny(tiny_model_dir)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(
        GreenlmError, match="group_size 48 does not divide the in_features 64 of model.layers.0"
    ):
        apply_step(model, cls(bits=4, group_size=48), context(tok))
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


@pytest.mark.parametrize("skip", [["*"], ["model.*", "lm_head"]])
def test_skip_that_leaves_nothing_is_refused(tiny_model_dir, skip):
    model, tok = load_tiny(tiny_model_dir)
    with pytest.raises(GreenlmError, match="no linear layers left to quantize"):
        apply_step(model, RTN(bits=8, skip=skip), context(tok))
