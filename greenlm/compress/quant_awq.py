"""AWQ-style activation-aware weight quantization: per input channel, scale weights up (and the layer's inputs
down) by mean|x|^alpha before rounding, so channels that carry large activations lose less (Lin et al., 2023).

By default each layer gets its own scales, kept in the quantized module (or folded into the dense weight),
rather than being folded into the preceding norm: that lets q/k/v and gate/up choose differently and works
for every layer, at the cost of one elementwise divide per call. With `fold: true` the scales are shared by
the layers reading one input and folded into the norm or linear before it (awq_fold.py), as the original
method does: no layer keeps a per-input-channel scale, so the codes are plain grid codes a GGUF block format
(Q4_0, ...) holds as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from greenlm.compress.awq_fold import fold_groups, fold_scale, norm_offset, search_shared_scale
from greenlm.compress.base import CompressContext, StepReport, register
from greenlm.compress.quant_common import (
    CalibratedQuantConfig,
    Quantized,
    calibrated,
    install,
    layer_by_layer,
    quant_targets,
    untie,
)
from greenlm.compress.quant_math import awq_search
from greenlm.data.calibration import decoder_layers, linear_names
from greenlm.errors import GreenlmError
from greenlm.kernels.quant_grid import rtn


@dataclass
class AWQ(CalibratedQuantConfig):
    """Activation-aware scale search then round-to-nearest; int4 with groups of 32 by default."""

    method = "awq"
    grid: int = 20  # alphas tried: 0, 1/grid, ..., (grid-1)/grid
    sequential: bool = True  # layer by layer, each calibrated on the already-quantized layers before it
    fold: bool = False  # shared scales folded into the norms / linears before: GGUF-writable codes

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.fold, bool):
            raise GreenlmError(f"fold must be true or false, got {self.fold!r}")
        if self.fold and not self.sequential:
            raise GreenlmError("fold: true quantizes layer by layer: set sequential: true")
        if isinstance(self.grid, bool) or not isinstance(self.grid, int) or self.grid < 2:
            raise GreenlmError(f"grid must be a whole number >= 2 (alphas tried), got {self.grid!r}")
        if not isinstance(self.sequential, bool):
            raise GreenlmError(f"sequential must be true or false, got {self.sequential!r}")


@register(AWQ)
def apply_awq(model, config: AWQ, ctx: CompressContext) -> StepReport:
    targets = quant_targets(model, config)
    untied = untie(model, targets)
    if config.fold:
        return _apply_folded(model, config, ctx, targets, untied)
    alphas: dict[str, float] = {}
    error = unscaled = 0.0

    def quantize(name, linear, stats) -> Quantized:
        nonlocal error, unscaled
        result = awq_search(
            linear.weight,
            stats.mean_abs,
            stats.hessian,
            bits=config.bits,
            group_size=config.group_size,
            symmetric=config.symmetric,
            grid=config.grid,
            gguf=config.gguf_grid,
        )
        alphas[name] = result.alpha
        error += result.error
        unscaled += result.error_unscaled
        scaled = result.alpha > 0
        return Quantized(result.weight, result.input_scale if scaled else None)

    results = calibrated(model, targets, ctx, quantize, sequential=config.sequential)
    scaled = sum(1 for a in alphas.values() if a > 0)
    details = {
        "layers_scaled": scaled,
        "alpha_mean": sum(alphas.values()) / len(alphas),
        "alphas": {n: round(a, 4) for n, a in alphas.items()},
        # sum over layers of ||X W^T - X W_q^T||^2 on calibration inputs, with and without the scales
        "output_error": error,
        "output_error_without_scales": unscaled,
        "calibration_tokens": int(ctx.calibration_windows().numel()),
    }
    report = install(model, config, targets, results, untied=untied, details=details)
    report.notes.append(
        f"awq: {scaled} of {len(alphas)} layers use activation-aware scales; calibration output error "
        f"{error / unscaled:.3f}x that of plain round-to-nearest"
        if unscaled > 0
        else "awq: no calibration error"
    )
    return report


def _apply_folded(model, config: AWQ, ctx: CompressContext, targets, untied: list[str]) -> StepReport:
    """AWQ with shared, folded scales (awq_fold.py), one decoder layer at a time."""
    windows = ctx.calibration_windows()
    offset = norm_offset(model)
    layers = decoder_layers(model)
    prefix_of = {id(m): n for n, m in model.named_modules()}
    outside = [n for n in linear_names(model) if n not in targets]
    grid = config.gguf_grid
    results: dict[str, Quantized] = {}
    alphas: dict[str, float] = {}
    error = unscaled = 0.0

    importance: dict[str, torch.Tensor] = {}

    def quantize(name: str) -> None:
        linear = targets[name]
        qw = rtn(
            linear.weight.detach(),
            config.bits,
            config.group_size,
            config.symmetric,
            grid,
            importance.get(name),
        )
        results[name] = Quantized(qw)
        with torch.no_grad():  # later layers must see this layer's quantized outputs
            linear.weight.copy_(qw.dequantize().to(linear.weight.dtype))

    for index, stats in layer_by_layer(model, windows, outside, ctx):
        layer = layers[index]
        prefix = prefix_of[id(layer)]
        folds = []
        for group in fold_groups(layer):
            names = [f"{prefix}.{m}" for m in group.members if f"{prefix}.{m}" in targets]
            if not names or names[0] not in stats:
                continue
            scale, alpha, err, base = search_shared_scale(
                [targets[n].weight.detach().float() for n in names],
                stats[names[0]],
                bits=config.bits,
                group_size=config.group_size,
                symmetric=config.symmetric,
                grid=config.grid,
                gguf=grid,
            )
            folds.append((group, scale))
            error, unscaled = error + err, unscaled + base
            for n in names:
                alphas[n] = alpha
                # the folded layer reads x / s: its columns' weight in the block-scale search is H_jj / s_j^2
                importance[n] = stats[names[0]].hessian.diagonal() / scale**2
        for group, scale in folds:  # every fold before any rounding: a fold into a linear's rows comes first
            fold_scale(layer, group, scale, offset)
        for name in stats:
            quantize(name)
    for name in targets:
        if name not in results:  # outside the decoder layers (an output head): no input to fold into
            alphas[name] = 0.0
            quantize(name)
    scaled = sum(1 for a in alphas.values() if a > 0)
    details = {
        "fold": True,
        "layers_scaled": scaled,
        "alpha_mean": sum(alphas.values()) / len(alphas),
        "alphas": {n: round(a, 4) for n, a in alphas.items()},
        "output_error": error,
        "output_error_without_scales": unscaled,
        "calibration_tokens": int(windows.numel()),
    }
    report = install(model, config, targets, results, untied=untied, details=details)
    ratio = f"{error / unscaled:.3f}x" if unscaled > 0 else "n/a"
    report.notes.append(
        f"awq (folded): {scaled} of {len(alphas)} layers use activation-aware scales, shared per input and "
        f"folded into the norms and linears before them; calibration output error {ratio} that of plain "
        "round-to-nearest"
    )
    return report
