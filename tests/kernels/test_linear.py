"""Every CPU kernel (greenlm/kernels/linear.py) against the float matmul of the same dequantized weight."""

from __future__ import annotations

import pytest
import torch

from greenlm.kernels.linear import KERNELS, QuantLinear, available_kernels
from greenlm.kernels.quant_grid import rtn

# Relative error bound, ||y - y_ref|| / ||y_ref||, by what the kernel does to the activations.
TOLERANCE = {
    "float32": 1e-5,  # the same weights in float32: only summation order differs (measured ~3e-7)
    "bfloat16": 1e-2,  # activations (and scales) rounded to bf16's 8-bit mantissa (measured ~3e-3)
    "int8": 3e-2,  # activations to 8-bit codes per token, 7-bit without VNNI (measured 0.5-1.5%)
}
SETTINGS = [(8, None, True), (8, None, False), (4, 32, True), (4, 32, False), (4, None, True), (3, 16, False)]


def _tolerance(name: str) -> float:
    kernel = KERNELS[name]
    if not kernel.weight_only:
        return TOLERANCE["int8"]
    return TOLERANCE["bfloat16" if kernel.option == "bfloat16" else "float32"]


KERNEL_CASES = [
    pytest.param(
        name, bits, group_size, symmetric, id=f"{name}-{bits}b-g{group_size}-{'sym' if symmetric else 'asym'}"
    )
    for name in available_kernels()
    for bits, group_size, symmetric in SETTINGS
    if KERNELS[name].check(bits, group_size, symmetric, 128) is None
]


def test_every_available_kernel_has_a_case():
    assert {c.values[0] for c in KERNEL_CASES} == set(available_kernels())


@pytest.mark.parametrize("name, bits, group_size, symmetric", KERNEL_CASES)
def test_kernel_matches_the_dequantized_float_matmul(name, bits, group_size, symmetric):
    gen = torch.Generator().manual_seed(0)
    weight = rtn(torch.randn(96, 128, generator=gen) * 0.05, bits, group_size, symmetric)
    bias = torch.randn(96, generator=gen) * 0.1
    input_scale = torch.rand(128, generator=gen) + 0.5  # AWQ's per-input-channel scale
    module = KERNELS[name].build(weight, bias=bias, input_scale=input_scale)
    assert isinstance(module, QuantLinear) and module.kernel == name
    w_float = weight.dequantize() / input_scale[None, :]
    assert torch.allclose(module.dequantized_weight(), w_float)
    # 1 token (batch-1 decode) and 7 tokens in a batch of 1 (prefill): some kernels take other paths
    for shape in [(1, 128), (1, 7, 128)]:
        x = torch.randn(*shape, generator=gen)
        with torch.inference_mode():
            y = module(x)
        expected = x @ w_float.T + bias
        assert y.shape == expected.shape and y.dtype == torch.float32
        rel = float((y - expected).norm() / expected.norm())
        assert rel < _tolerance(name), f"{name} {shape}: relative error {rel:.2e}"

    # the stored buffers are the whole weight: a module rebuilt from spec + state dict computes the same
    rebuilt = type(module).from_spec(module.spec())
    rebuilt.load_state_dict(module.state_dict())
    with torch.inference_mode():
        assert torch.equal(rebuilt(x), module(x))
