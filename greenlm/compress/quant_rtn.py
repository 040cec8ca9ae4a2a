"""Round-to-nearest weight quantization: no calibration, each weight to its nearest grid point."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from greenlm.compress.base import CompressContext, StepReport, register
from greenlm.compress.quant_common import Quantized, WeightQuantConfig, install, quant_targets, untie
from greenlm.kernels.quant_grid import rtn
from greenlm.progress import ProgressEvent


@dataclass
class RTN(WeightQuantConfig):
    """Weight-only round-to-nearest: int8 per output channel by default; int4/int3 with `group_size`."""

    method = "rtn"


@register(RTN)
def apply_rtn(model, config: RTN, ctx: CompressContext) -> StepReport:
    targets = quant_targets(model, config)
    untied = untie(model, targets)
    results = {}
    for i, (name, linear) in enumerate(targets.items(), 1):
        with torch.no_grad():
            results[name] = Quantized(
                rtn(linear.weight, config.bits, config.group_size, config.symmetric, config.gguf_grid)
            )
        ctx.progress(ProgressEvent("quantizing", i, len(targets), "layers"))
    return install(model, config, targets, results, untied=untied)
