"""Weight quantization math as pure functions on tensors: grids, round-to-nearest, GPTQ and AWQ scale search.

One representation throughout: an affine grid per (output row, group of `group_size` input columns),

    w ~= scale * (q - zero),   q an integer in [0, 2**bits - 1],  zero a float in code units.

Symmetric grids fix `zero = 2**(bits-1)` and `scale = 2 * max|w| / (2**bits - 1)` (the GPTQ convention, so
every level of the grid is used). Asymmetric grids span exactly [min(w), max(w)] of the group, so `zero` may
be fractional (as in GGUF's Q4_1 and the int4 CPU kernel's float zero); forcing 0 onto the grid, as integer
zero points must, wastes levels. Either way every weight lies within `scale / 2` of its dequantized value.
`group_size=None` means one group per output row (per-channel). Kernel-specific layouts (packed int4, int8 with a zero point folded out) are made
from this in `quant_kernels`.
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


def output_error(w: torch.Tensor, w_hat: torch.Tensor, hessian: torch.Tensor) -> float:
    """sum over calibration rows x of ||x (w - w_hat)^T||^2, from the input Hessian H = sum x x^T."""
    delta = (w.float() - w_hat.float()).double()
    return float(((delta @ hessian.double()) * delta).sum())


# --- GPTQ -------------------------------------------------------------------------------------------------


@dataclass
class GPTQResult:
    weight: QuantizedWeight
    loss: float  # GPTQ's own objective: sum of (w - q)^2 / [H^-1]_ii / 2 over every weight
    dead_columns: int  # inputs never active on calibration text (H_ii = 0): quantized without feedback


def _inverse_hessian_factor(h: torch.Tensor, damp_percent: float) -> torch.Tensor:
    """Upper Cholesky factor of H^-1 after damping the diagonal by `damp_percent` of its mean; more
    damping if the Hessian is still not positive definite (dependent inputs)."""
    diag = torch.arange(h.shape[0])
    damp = damp_percent * float(h.diagonal().mean())
    for _attempt in range(6):
        damped = h.clone()
        damped[diag, diag] += damp
        chol, info = torch.linalg.cholesky_ex(damped)
        if int(info) == 0:
            inverse = torch.cholesky_inverse(chol)
            upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
            if int(info) == 0:
                return upper
        damp = max(damp * 10.0, 1e-6)
    raise ValueError("the calibration Hessian is not positive definite even after heavy damping")


def gptq(
    w: torch.Tensor,
    hessian: torch.Tensor,
    *,
    bits: int,
    group_size: int | None = None,
    symmetric: bool = True,
    damp_percent: float = 0.01,
    block_size: int = 128,
    act_order: bool = False,
) -> GPTQResult:
    """GPTQ (Frantar et al., 2022): quantize columns one at a time, spreading each column's rounding error
    over the columns not yet quantized through the inverse Hessian of the layer's inputs; updates are applied
    lazily per block of `block_size` columns.

    Group grids are fitted when the quantizer reaches a group's first column, on the error-updated weights.
    With `act_order` (columns in decreasing H_ii order) the group grids are fitted up front on the original
    weights ("static groups"), so groups stay contiguous in the original column order and every kernel can
    use them.
    """
    w = w.detach().float().clone()
    rows, cols = w.shape
    if hessian.shape != (cols, cols):
        raise ValueError(f"Hessian {tuple(hessian.shape)} does not match {cols} weight columns")
    h = hessian.detach().float().clone()
    if group_size is not None and cols % group_size:
        raise ValueError(f"group size {group_size} does not divide {cols} input columns")
    maxq = max_code(bits)
    groups = groups_of(cols, group_size)
    size = cols if group_size is None else group_size

    dead = h.diagonal() == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0

    scale = torch.ones(rows, groups)
    zero = torch.zeros(rows, groups)
    static = act_order or group_size is None
    if static:
        scale, zero = grid_params(w, bits, symmetric, group_size)

    perm = torch.argsort(h.diagonal(), descending=True) if act_order else torch.arange(cols)
    w = w[:, perm]
    h = h[perm][:, perm]
    hinv = _inverse_hessian_factor(h, damp_percent)

    codes = torch.zeros(rows, cols)
    loss = torch.zeros((), dtype=torch.float64)
    for start in range(0, cols, block_size):
        end = min(start + block_size, cols)
        w1 = w[:, start:end].clone()
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[start:end, start:end]
        for i in range(end - start):
            col = start + i
            orig = int(perm[col])
            g = orig // size
            if not static and orig % size == 0:
                # The group's grid, on its weights as updated so far (in-block columns from w1).
                span = torch.cat([w1[:, i:], w[:, end:]], dim=1)[:, :size]
                s, z = grid_params(span, bits, symmetric, None)
                scale[:, g], zero[:, g] = s[:, 0], z[:, 0]
            s, z = scale[:, g], zero[:, g]
            col_w = w1[:, i]
            q = torch.clamp(torch.round(col_w / s + z), 0, maxq)
            dq = s * (q - z)
            codes[:, col] = q
            d = hinv1[i, i]
            loss += (((col_w - dq) ** 2) / d**2 / 2).sum().double()
            err = (col_w - dq) / d
            w1[:, i:] -= err[:, None] @ hinv1[i, i:][None, :]
            err1[:, i] = err
        w[:, end:] -= err1 @ hinv[start:end, end:]

    inverse = torch.argsort(perm)
    q = codes[:, inverse].to(torch.uint8)
    weight = QuantizedWeight(q, scale, zero, bits, group_size)
    return GPTQResult(weight, float(loss), int(dead.sum()))


# --- AWQ --------------------------------------------------------------------------------------------------


@dataclass
class AWQResult:
    weight: QuantizedWeight  # codes of w * input_scale (per input column)
    input_scale: torch.Tensor  # [in] s: the layer computes (x / s) @ Q(w * s)^T
    alpha: float  # chosen exponent: s = mean|x|^alpha, normalized
    error: float  # output error of the chosen scales (see `output_error`)
    error_unscaled: float  # output error of plain RTN (alpha = 0), the search's fallback


def awq_scales(mean_abs: torch.Tensor, alpha: float) -> torch.Tensor:
    """AWQ's per-input-channel scales: mean|x_j|^alpha, normalized so the geometric middle of the range is 1."""
    s = mean_abs.float().clamp(min=1e-5).pow(alpha)
    return s / (s.max() * s.min()).sqrt()


def awq_weight(
    w: torch.Tensor, input_scale: torch.Tensor, bits: int, group_size: int | None, symmetric: bool
) -> tuple[QuantizedWeight, torch.Tensor]:
    """RTN of w * s, and the float weight it is equivalent to: Q(w * s) / s."""
    qw = rtn(w.float() * input_scale[None, :], bits, group_size, symmetric)
    return qw, qw.dequantize() / input_scale[None, :]


def awq_search(
    w: torch.Tensor,
    mean_abs: torch.Tensor,
    hessian: torch.Tensor,
    *,
    bits: int,
    group_size: int | None = None,
    symmetric: bool = True,
    grid: int = 20,
) -> AWQResult:
    """Activation-aware scale search (Lin et al., 2023): try alpha in {0, 1/grid, ..., (grid-1)/grid} and
    keep the one with the least output error on the calibration inputs. The error is computed exactly from
    the input Hessian, so no activations need to be stored. alpha = 0 is plain RTN, so the search is never
    worse than no scaling on its own objective."""
    w = w.detach().float()
    best: tuple[float, float, QuantizedWeight, torch.Tensor] | None = None
    unscaled = 0.0
    for step in range(grid):
        alpha = step / grid
        s = awq_scales(mean_abs, alpha) if step else torch.ones(w.shape[1])
        qw, equivalent = awq_weight(w, s, bits, group_size, symmetric)
        err = output_error(w, equivalent, hessian)
        if step == 0:
            unscaled = err
        if best is None or err < best[0]:
            best = (err, alpha, qw, s)
    assert best is not None
    err, alpha, qw, s = best
    return AWQResult(qw, s, alpha, err, unscaled)
