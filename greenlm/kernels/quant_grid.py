"""The quantization grid every low-bit path shares, as pure functions on tensors.

One representation throughout: an affine grid per (output row, group of `group_size` input columns),

    w ~= scale * (q - zero),   q an integer in [0, 2**bits - 1],  zero a float in code units,

evaluated as `scale * q - scale * zero` (two products, one subtraction) wherever greenlm dequantizes, so a
grid whose scale and `scale * zero` are fp16 numbers reproduces GGUF's `d * q + m` to the last bit.

Symmetric grids fix `zero = 2**(bits-1)` and `scale = 2 * max|w| / (2**bits - 1)` (the GPTQ convention, so
every level of the grid is used). Asymmetric grids span exactly [min(w), max(w)] of the group, so `zero` may
be fractional (as in GGUF's Q4_1 and the int4 CPU kernel's float zero); forcing 0 onto the grid, as integer
zero points must, wastes levels. Either way every weight lies within `scale / 2` of its dequantized value.
`group_size=None` means one group per output row (per-channel). Kernel-specific layouts (packed int4, int8
with a zero point folded out) are made from this in `kernels.linear`; GPTQ and AWQ (in `compress.quant_math`)
choose codes on this grid.

GGUF block formats (`GGUF_GRIDS`: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) are special cases of this grid: blocks of 32
input columns, an fp16 scale `d`, and either a fixed integer zero (`d * (q - 8)`, `d * (q - 16)`, int8 `d * q`)
or an fp16 minimum `m` (`d * q + m`, so `zero = -m / d`). `fit_grid(..., gguf=...)` chooses grids of that
form, so quantizers that use it (RTN, GPTQ, AWQ) produce codes that can be written into GGUF blocks as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

BITS = (8, 5, 4, 3)
GGUF_BLOCK = 32  # weights per block of every GGUF format below, along the input dimension


@dataclass(frozen=True)
class GgufGrid:
    """A GGUF block format as a greenlm grid: `bits`-bit codes, group size 32, fp16 scale (and minimum)."""

    name: str  # llama.cpp's name: q4_0, q4_1, ...
    bits: int
    symmetric: bool  # True: zero fixed at 2**(bits-1); False: zero = -m / d with an fp16 minimum m
    qmin: int = 0  # lowest code (Q8_0 keeps int8 codes in -127..127: ggml's int8 dot products assume it)

    @property
    def zero(self) -> int:
        return 2 ** (self.bits - 1)


GGUF_GRIDS = {
    g.name: g
    for g in (
        GgufGrid("q4_0", 4, True),
        GgufGrid("q4_1", 4, False),
        GgufGrid("q5_0", 5, True),
        GgufGrid("q5_1", 5, False),
        GgufGrid("q8_0", 8, True, qmin=1),
    )
}


def gguf_grid_for(bits: int, group_size: int | None, symmetric: bool) -> GgufGrid | None:
    """The GGUF format whose blocks hold exactly this grid's shape, or None."""
    if group_size != GGUF_BLOCK:
        return None
    return next((g for g in GGUF_GRIDS.values() if g.bits == bits and g.symmetric == symmetric), None)


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

    def gguf_mismatch(self, grid: GgufGrid) -> str | None:
        """Why these codes cannot be written as `grid`'s blocks without re-rounding, or None if they can."""
        if self.bits != grid.bits or self.group_size != GGUF_BLOCK:
            return f"{self.bits}-bit codes in groups of {self.group_size}, {grid.name} holds {grid.bits}-bit in 32"
        if not _fp16_exact(self.scale):
            return "its scales are not fp16 numbers"
        if grid.symmetric:
            if not bool((self.zero == grid.zero).all()):
                return f"its zero points are not all {grid.zero}"
            if int(self.q.min()) < grid.qmin:
                return f"a code is below {grid.qmin} (int8 -128, which ggml's dot products do not take)"
        elif not _fp16_exact(self.scale * self.zero):
            return "its minima (scale x zero) are not fp16 numbers"
        return None


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


def _fp16_exact(x: torch.Tensor) -> bool:
    return bool((x.to(torch.float16).float() == x).all())


def _fp16_neighbour(x: torch.Tensor, steps: int) -> torch.Tensor:
    """fp16 `x` moved `steps` representable values away from zero (same sign), as float32."""
    bits = x.to(torch.float16).view(torch.int16).int() + steps
    moved = bits.clamp(-32768, 32767).short().view(torch.float16).float()
    return torch.where(torch.isfinite(moved) & (moved * x.float() >= 0), moved, x.float())


# Symmetric 4/5-bit scales tried per block: amax / t for these t (in units of the zero code, 8 or 16), with
# either sign. Codes run from -zero to zero - 1, so a negative scale puts the extra level on the side of the
# block's largest weight (ggml's own Q4_0 rule, d = max / -8, is t = 1 with that sign); t = 15/16 with a
# positive scale is greenlm's plain symmetric grid, so the search never does worse than it.
SCALE_SEARCH = (0.875, 0.90625, 0.9375, 0.96875, 1.0, 1.03125, 1.0625)


def _symmetric_search(
    g: torch.Tensor, grid: GgufGrid, weights: torch.Tensor | None, fp16_tiny: float
) -> torch.Tensor:
    """Per block the fp16 scale (of either sign) with the least weighted squared rounding error."""
    amax = g.abs().amax(-1)
    zero = float(grid.zero)
    imp = torch.ones_like(g) if weights is None else weights.expand_as(g)
    best_err = torch.full_like(amax, float("inf"))
    best = torch.ones_like(amax)
    for t in SCALE_SEARCH:
        for sign in (1.0, -1.0):
            raw = sign * amax / (t * zero)
            d = raw.to(torch.float16).float()
            d = torch.where(d.abs() > 0, d, torch.full_like(d, fp16_tiny))
            q = torch.clamp(torch.round(g / d[..., None] + zero), grid.qmin, max_code(grid.bits))
            err = (imp * (g - (d[..., None] * q - d[..., None] * zero)) ** 2).sum(-1)
            better = err < best_err
            best_err, best = torch.where(better, err, best_err), torch.where(better, d, best)
    return torch.where(amax > 0, best, torch.ones_like(best))


def _gguf_params(
    g: torch.Tensor, grid: GgufGrid, weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero) of a GGUF format's grid for grouped weights g [out, groups, 32]; `weights` [groups, 32]
    (or broadcastable): how much each input column's error counts in the symmetric scale search."""
    maxq = max_code(grid.bits)
    fp16_tiny = 2.0**-24  # the smallest positive fp16 number
    if grid.symmetric:
        if grid.qmin:  # Q8_0 as ggml does it: amax -> 127, codes -127..127 (8 bits leave little to search)
            amax = g.abs().amax(-1)
            raw = amax / 127.0
            scale = raw.to(torch.float16).float()
            scale = torch.where(raw > 0, scale.clamp(min=fp16_tiny), torch.ones_like(scale))
        else:
            scale = _symmetric_search(g, grid, weights, fp16_tiny)
        return scale, torch.full_like(scale, grid.zero)
    low, high = g.amin(-1), g.amax(-1)
    raw = (high - low) / maxq
    d0 = torch.where(raw > 0, raw.to(torch.float16).float().clamp(min=fp16_tiny), torch.ones_like(raw))
    m0 = low.to(torch.float16).float()
    # zero = -m / d must give back m exactly as d * zero in float32, so that d * q - d * zero is bit for bit
    # GGUF's d * q + m. Not every fp16 m is reachable from a given d; a neighbouring fp16 d or m (a relative
    # change of 2**-11 at most) always was, in tests over millions of groups.
    scale, zero = d0.clone(), -m0 / d0
    done = d0 * zero == -m0
    for d_step in (0, 1, -1):
        d = _fp16_neighbour(d0, d_step) if d_step else d0
        for m_step in (0, 1, -1, 2, -2, 3, -3):
            m = _fp16_neighbour(m0, m_step) if m_step else m0
            z = -m / d
            good = (d * z == -m) & ~done & (d > 0)
            scale, zero, done = torch.where(good, d, scale), torch.where(good, z, zero), done | good
    return scale, zero


def fit_grid(
    w: torch.Tensor,
    bits: int,
    symmetric: bool,
    group_size: int | None = None,
    gguf: GgufGrid | None = None,
    importance: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero) for `w` [out, in]: greenlm's round-to-nearest grid, or with `gguf` that format's (its
    symmetric scales searched per block for the least squared error, each input column weighted by
    `importance` [in], e.g. the diagonal of the input Hessian; uniform when None)."""
    if gguf is None:
        return grid_params(w, bits, symmetric, group_size)
    if (bits, symmetric, group_size) != (gguf.bits, gguf.symmetric, GGUF_BLOCK):
        raise ValueError(f"{gguf.name} is {gguf.bits}-bit, groups of 32, symmetric={gguf.symmetric}")
    weights = None
    if importance is not None:
        weights = importance.detach().float().clamp(min=0).reshape(-1, GGUF_BLOCK)[None]
    return _gguf_params(_grouped(w.detach().float(), group_size), gguf, weights)


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
    w: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    bits: int,
    group_size: int | None = None,
    qmin: int = 0,
) -> torch.Tensor:
    """Integer codes of `w` on the grid (scale, zero): uint8 [out, in], at least `qmin`."""
    cols = w.shape[1]
    s = _expand(scale.float(), group_size, cols)
    z = _expand(zero.float(), group_size, cols)
    return torch.clamp(torch.round(w.detach().float() / s + z), qmin, max_code(bits)).to(torch.uint8)


def dequantize(
    q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int | None = None
) -> torch.Tensor:
    """scale * q - scale * zero per group (see the module note on why in this order)."""
    cols = q.shape[1]
    scale = scale.float()
    return _expand(scale, group_size, cols) * q.float() - _expand(scale * zero.float(), group_size, cols)


def rtn(
    w: torch.Tensor,
    bits: int,
    group_size: int | None = None,
    symmetric: bool = True,
    gguf: GgufGrid | None = None,
    importance: torch.Tensor | None = None,
) -> QuantizedWeight:
    """Round-to-nearest quantization of `w` [out, in] (on a GGUF format's grid with `gguf`, its scales chosen
    for the least error weighted by `importance` per input column)."""
    scale, zero = fit_grid(w, bits, symmetric, group_size, gguf, importance)
    qmin = gguf.qmin if gguf else 0
    return QuantizedWeight(quantize(w, scale, zero, bits, group_size, qmin), scale, zero, bits, group_size)


def fake_quantize(
    w: torch.Tensor, bits: int, group_size: int | None = None, symmetric: bool = True
) -> torch.Tensor:
    """`w` rounded to its RTN grid and back, in w's dtype."""
    return rtn(w, bits, group_size, symmetric).dequantize(w.dtype)
