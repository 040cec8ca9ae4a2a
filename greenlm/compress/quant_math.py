"""Weight quantization methods as pure functions on tensors: GPTQ and AWQ scale search, on the grid of
`greenlm.kernels.quant_grid` (codes, per-group scales and zero points)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from greenlm.kernels.quant_grid import GgufGrid, QuantizedWeight, fit_grid, groups_of, max_code, rtn

__all__ = ["AWQResult", "GPTQResult", "awq_scales", "awq_search", "awq_weight", "gptq", "output_error"]


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
    gguf: GgufGrid | None = None,
) -> GPTQResult:
    """GPTQ (Frantar et al., 2022): quantize columns one at a time, spreading each column's rounding error
    over the columns not yet quantized through the inverse Hessian of the layer's inputs; updates are applied
    lazily per block of `block_size` columns.

    Group grids are fitted when the quantizer reaches a group's first column, on the error-updated weights.
    With `act_order` (columns in decreasing H_ii order) the group grids are fitted up front on the original
    weights ("static groups"), so groups stay contiguous in the original column order and every kernel can
    use them.

    With `gguf` the grids are that GGUF format's (fp16 scales and minima), so the error each column spreads
    is the error of exactly the values the GGUF file will hold.
    """
    w = w.detach().float().clone()
    rows, cols = w.shape
    if hessian.shape != (cols, cols):
        raise ValueError(f"Hessian {tuple(hessian.shape)} does not match {cols} weight columns")
    h = hessian.detach().float().clone()
    if group_size is not None and cols % group_size:
        raise ValueError(f"group size {group_size} does not divide {cols} input columns")
    maxq = max_code(bits)
    qmin = gguf.qmin if gguf else 0
    groups = groups_of(cols, group_size)
    size = cols if group_size is None else group_size

    dead = h.diagonal() == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0

    scale = torch.ones(rows, groups)
    zero = torch.zeros(rows, groups)
    static = act_order or group_size is None
    if static:
        scale, zero = fit_grid(w, bits, symmetric, group_size, gguf, h.diagonal())

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
                s, z = fit_grid(
                    span,
                    bits,
                    symmetric,
                    size if gguf else None,
                    gguf,
                    h.diagonal()[col : col + size] if gguf else None,
                )
                scale[:, g], zero[:, g] = s[:, 0], z[:, 0]
            s, z = scale[:, g], zero[:, g]
            col_w = w1[:, i]
            q = torch.clamp(torch.round(col_w / s + z), qmin, maxq)
            dq = s * q - s * z  # as grid.dequantize computes it
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
    w: torch.Tensor,
    input_scale: torch.Tensor,
    bits: int,
    group_size: int | None,
    symmetric: bool,
    gguf: GgufGrid | None = None,
    hessian: torch.Tensor | None = None,
) -> tuple[QuantizedWeight, torch.Tensor]:
    """RTN of w * s, and the float weight it is equivalent to: Q(w * s) / s. With a GGUF grid and the input
    `hessian`, block scales are chosen for the least error weighted by the scaled inputs' H_jj / s_j^2."""
    importance = (
        hessian.diagonal() / input_scale.float() ** 2 if (gguf is not None and hessian is not None) else None
    )
    qw = rtn(w.float() * input_scale[None, :], bits, group_size, symmetric, gguf, importance)
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
    gguf: GgufGrid | None = None,
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
        qw, equivalent = awq_weight(w, s, bits, group_size, symmetric, gguf, hessian)
        err = output_error(w, equivalent, hessian)
        if step == 0:
            unscaled = err
        if best is None or err < best[0]:
            best = (err, alpha, qw, s)
    assert best is not None
    err, alpha, qw, s = best
    return AWQResult(qw, s, alpha, err, unscaled)
