"""GPTQ: weight quantization that corrects each column's rounding error on the columns still to come, using
the Hessian of the layer's inputs on the calibration split (Frantar et al., 2022)."""

from __future__ import annotations

from dataclasses import dataclass

from greenlm.compress.base import CompressContext, StepReport, register
from greenlm.compress.quant_common import (
    CalibratedQuantConfig,
    Quantized,
    calibrated,
    install,
    quant_targets,
    untie,
)
from greenlm.compress.quant_math import gptq
from greenlm.errors import GreenlmError


@dataclass
class GPTQ(CalibratedQuantConfig):
    """GPTQ weight quantization; int4 with groups of 32 by default."""

    method = "gptq"
    damp_percent: float = 0.01  # added to the Hessian diagonal, as a fraction of its mean
    block_size: int = 128  # columns per lazy-update block
    act_order: bool = False  # quantize columns in decreasing Hessian-diagonal order (static groups)
    sequential: bool = True  # layer by layer, each calibrated on the already-quantized layers before it

    def __post_init__(self) -> None:
        super().__post_init__()
        if (
            isinstance(self.damp_percent, bool)
            or not isinstance(self.damp_percent, (int, float))
            or not (0 < self.damp_percent <= 1)
        ):
            raise GreenlmError(f"damp_percent must be in (0, 1], got {self.damp_percent!r}")
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or self.block_size < 1:
            raise GreenlmError(f"block_size must be a whole number >= 1, got {self.block_size!r}")
        for name in ("act_order", "sequential"):
            if not isinstance(getattr(self, name), bool):
                raise GreenlmError(f"{name} must be true or false, got {getattr(self, name)!r}")


@register(GPTQ)
def apply_gptq(model, config: GPTQ, ctx: CompressContext) -> StepReport:
    targets = quant_targets(model, config)
    untied = untie(model, targets)
    loss = 0.0
    dead = 0

    def quantize(name, linear, stats) -> Quantized:
        nonlocal loss, dead
        try:
            result = gptq(
                linear.weight,
                stats.hessian,
                bits=config.bits,
                group_size=config.group_size,
                symmetric=config.symmetric,
                damp_percent=float(config.damp_percent),
                block_size=config.block_size,
                act_order=config.act_order,
                gguf=config.gguf_grid,
            )
        except ValueError as exc:
            raise GreenlmError(
                f"GPTQ failed on {name}: {exc}: raise damp_percent or add it to skip"
            ) from None
        loss += result.loss
        dead += result.dead_columns
        return Quantized(result.weight)

    results = calibrated(model, targets, ctx, quantize, sequential=config.sequential)
    windows = ctx.calibration_windows()
    details = {
        "gptq_loss": loss,
        "inputs_never_active": dead,
        "calibration_tokens": int(windows.numel()),
        "calibration_text": "calibration split",
    }
    return install(model, config, targets, results, untied=untied, details=details)
