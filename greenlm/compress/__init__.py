"""Compression methods: each module registers a config dataclass and the function that applies it."""

from greenlm.compress.base import (
    CompressContext,
    StepConfig,
    StepReport,
    apply_step,
    config_class,
    method_names,
    register,
)

__all__ = ["CompressContext", "StepConfig", "StepReport", "apply_step", "config_class", "method_names", "register"]
