"""The quantization grid every low-bit path shares, as pure functions on tensors.

One representation throughout: an affine grid per (output row, group of `group_size` input columns),

    w ~= scale * (q - zero),   q an integer in [0, 2**bits - 1],  zero a float in code units.

Symmetric grids fix `zero = 2**(bits-1)` and `scale = 2 * max|w| / (2**bits - 1)` (the GPTQ convention, so
every level of the grid is used). Asymmetric grids span exactly [min(w), max(w)] of the group, so `zero` may
be fractional (as in GGUF's Q4_1 and the int4 CPU kernel's float zero); forcing 0 onto the grid, as integer
zero points must, wastes levels. Either way every weight lies within `scale / 2` of its dequantized value.
`group_size=None` means one group per output row (per-channel). Kernel-specific layouts (packed int4, int8
with a zero point folded out) are made from this in `kernels.linear`; GPTQ and AWQ (in `compress.quant_math`)
choose codes on this grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

BITS = (8, 4, 3)


@dataclass
class QuantizedWeight:
    """A quantized [out, in] weight: integer codes, per-group scales and zero points."""

    q: torch.Tensor  # [out, in] uint8 codes in [0, 2**bits - 1]
    scale: torch.Tensor  # [out, groups] float32
    zero: torch.Tensor  # [out, groups] float32 zero points in code units
    bits: int
    group_size: int | None  # None: per output channel

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.q.shape)  # type: ignore[return-value]

    @property
    def symmetric(self) -> bool:
        return bool((self.zero == 2 ** (self.bits - 1)).all())

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize(self.q, self.scale, self.zero, self.group_size).to(dtype)


def max_code(bits: int) -> int:
    return 2**bits - 1


def groups_of(columns: int, group_size: int | None) -> int:
    return 1 if group_size is None else columns // group_size


def _grouped(w: torch.Tensor, group_size: int | None) -> torch.Tensor:
    """[out, in] -> [out, groups, size]."""
    rows, cols = w.shape
    size = cols if group_size is None else group_size
    if cols % size:
        raise ValueError(f"group size {size} does not divide {cols} input columns")
    return w.reshape(rows, cols // size, size)


def _expand(per_group: torch.Tensor, group_size: int | None, columns: int) -> torch.Tensor:
    """[out, groups] -> [out, in], each group's value repeated over its columns."""
    size = columns if group_size is None else group_size
    return per_group.repeat_interleave(size, dim=1)


def grid_params(
    w: torch.Tensor, bits: int, symmetric: bool, group_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Round-to-nearest grid for `w` [out, in]: (scale, zero), each [out, groups] float32."""
    g = _grouped(w.detach().float(), group_size)
    maxq = max_code(bits)
    if symmetric:
        amax = g.abs().amax(-1)
        scale = 2.0 * amax / maxq
        zero = torch.full_like(scale, 2 ** (bits - 1))
    else:
        low, high = g.amin(-1), g.amax(-1)
        scale = (high - low) / maxq
    # A constant group gets scale 1; its zero point then puts code 0 exactly on the constant.
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    if not symmetric:
        zero = -low / scale
    return scale, zero


def quantize(
    w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int, group_size: int | None = None
) -> torch.Tensor:
    """Integer codes of `w` on the grid (scale, zero): uint8 [out, in]."""
    cols = w.shape[1]
    s = _expand(scale.float(), group_size, cols)
    z = _expand(zero.float(), group_size, cols)
    return torch.clamp(torch.round(w.detach().float() / s + z), 0, max_code(bits)).to(torch.uint8)


def dequantize(
    q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int | None = None
) -> torch.Tensor:
    cols = q.shape[1]
    return _expand(scale.float(), group_size, cols) * (q.float() - _expand(zero.float(), group_size, cols))


def rtn(w: torch.Tensor, bits: int, group_size: int | None = None, symmetric: bool = True) -> QuantizedWeight:
    """Round-to-nearest quantization of `w` [out, in]."""
    scale, zero = grid_params(w, bits, symmetric, group_size)
    return QuantizedWeight(quantize(w, scale, zero, bits, group_size), scale, zero, bits, group_size)


def fake_quantize(
    w: torch.Tensor, bits: int, group_size: int | None = None, symmetric: bool = True
) -> torch.Tensor:
    """`w` rounded to its RTN grid and back, in w's dtype."""
    return rtn(w, bits, group_size, symmetric).dequantize(w.dtype)
