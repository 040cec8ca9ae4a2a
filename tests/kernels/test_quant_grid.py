"""The quantization grid (greenlm/kernels/quant_grid.py) on tiny tensors: round-trip error bounds, int4 packing."""

from __future__ import annotations

import pytest
import torch

from greenlm.kernels.linear import pack_int4, unpack_int4
from greenlm.kernels.quant_grid import rtn

# --- quantize-dequantize error bounds ----------------------------------------------------------

GRIDS = [(8, None), (4, 32), (4, 16), (3, 32), (3, 8)]  # (bits, group_size); None: per output channel


def _weights(seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(24, 64, generator=gen) * 0.02
    w[3, 5] = 0.5  # one outlier: it widens its own group's step only
    w[7] += 0.3  # a row well off zero: asymmetric grids follow it, symmetric ones waste half their levels
    w[10] = 0.0  # constant groups need a usable scale
    w[11] = 0.1
    return w


def _step_per_element(scale: torch.Tensor, group_size: int | None, columns: int) -> torch.Tensor:
    return scale.repeat_interleave(group_size or columns, dim=1)


@pytest.mark.parametrize("bits, group_size", GRIDS)
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
def test_round_trip_error_is_at_most_half_a_step(bits, group_size, symmetric):
    w = _weights(bits)
    qw = rtn(w, bits, group_size, symmetric)
    rows, cols = w.shape
    size = group_size or cols
    assert qw.q.dtype == torch.uint8 and int(qw.q.max()) <= 2**bits - 1
    assert qw.scale.shape == qw.zero.shape == (rows, cols // size)
    assert qw.symmetric == symmetric

    step = _step_per_element(qw.scale, group_size, cols)
    error = (w - qw.dequantize()).abs()
    # slack: float32 arithmetic on codes up to 2**bits is exact to a few ulps (1e-4 of a step at 8 bits)
    assert (error <= step * (0.5 + 1e-4)).all(), float((error / step).max())
    assert error.max() > 0  # real rounding happened

    # The bound is not vacuous: each step is exactly the group's range over the levels it can use.
    groups = w.reshape(rows, -1, size)
    varied = groups.amax(-1) > groups.amin(-1)
    if symmetric:
        expected = 2 * groups.abs().amax(-1) / (2**bits - 1)
    else:
        expected = (groups.amax(-1) - groups.amin(-1)) / (2**bits - 1)
    assert torch.allclose(qw.scale[varied], expected[varied], rtol=1e-6)
    if not symmetric:  # the ends of every group land exactly on the grid
        dq = qw.dequantize().reshape(rows, -1, size)
        assert torch.allclose(dq.amin(-1), groups.amin(-1), atol=1e-6)
        assert torch.allclose(dq.amax(-1), groups.amax(-1), atol=1e-6)
    assert torch.equal(qw.dequantize()[10], torch.zeros(cols))  # zero stays exactly zero
    if group_size is not None:  # the outlier coarsens its own group, not the rest of its row
        outlier_group = 5 // group_size
        others = [g for g in range(cols // group_size) if g != outlier_group]
        assert (qw.scale[3, others] < qw.scale[3, outlier_group] / 5).all()


def test_int8_per_channel_error_is_far_below_int4():
    w = _weights(0)
    err8 = (w - rtn(w, 8).dequantize()).abs().max()
    err4 = (w - rtn(w, 4).dequantize()).abs().max()
    assert err8 < err4 / 10  # 255 vs 15 levels over the same per-row range


def test_int4_packing_round_trips():
    codes = torch.randint(0, 16, (6, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    packed = pack_int4(codes)
    assert packed.shape == (6, 16)
    assert torch.equal(unpack_int4(packed), codes)
