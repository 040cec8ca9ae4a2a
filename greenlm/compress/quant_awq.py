"""AWQ-style activation-aware weight quantization: per input channel, scale weights up (and the layer's inputs
down) by mean|x|^alpha before rounding, so channels that carry large activations lose less (Lin et al., 2023).

Each layer gets its own scales, kept in the quantized module (or folded into the dense weight), rather than
being folded into the preceding norm: that lets q/k/v and gate/up choose differently and works for every
layer, at the cost of one elementwise divide per call.
"""

from __future__ import annotations

from dataclasses import dataclass

from greenlm.compress.base import CompressContext, StepReport, register
from greenlm.compress.quant_common import (
    Quantized,
    WeightQuantConfig,
    calibrated,
    install,
    quant_targets,
    untie,
)
from greenlm.compress.quant_math import awq_search
from greenlm.errors import GreenlmError


@dataclass
class AWQ(WeightQuantConfig):
    """Activation-aware scale search then round-to-nearest; int4 with groups of 32 by default."""

    method = "awq"
    bits: int = 4
    group_size: int | None = 32
    grid: int = 20  # alphas tried: 0, 1/grid, ..., (grid-1)/grid
    sequential: bool = True  # layer by layer, each calibrated on the already-quantized layers before it

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.grid, bool) or not isinstance(self.grid, int) or self.grid < 2:
            raise GreenlmError(f"grid must be a whole number >= 2 (alphas tried), got {self.grid!r}")
        if not isinstance(self.sequential, bool):
            raise GreenlmError(f"sequential must be true or false, got {self.sequential!r}")


@register(AWQ)
def apply_awq(model, config: AWQ, ctx: CompressContext) -> StepReport:
    targets = quant_targets(model, config)
    untied = untie(model, targets)
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
