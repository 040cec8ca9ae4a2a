"""Compression methods: each module registers a config dataclass and the function that applies it."""

from greenlm.compress import layers, prune, structured  # noqa: F401  (each registers its methods)
from greenlm.compress.base import (
    CompressContext,
    StepConfig,
    StepReport,
    apply_step,
    config_class,
    method_names,
    register,
)
from greenlm.compress.quant_awq import AWQ
from greenlm.compress.quant_gptq import GPTQ
from greenlm.compress.quant_kernels import KERNELS as QUANT_KERNELS
from greenlm.compress.quant_rtn import RTN

__all__ = [
    "AWQ",
    "GPTQ",
    "QUANT_KERNELS",
    "RTN",
    "CompressContext",
    "StepConfig",
    "StepReport",
    "apply_step",
    "config_class",
    "method_names",
    "register",
]
