"""Every compression method, registered: look one up by name, or apply it.

Each method module registers its config dataclass and function with `base.register` when imported; this
module imports them all, so a lookup here sees every method.
"""

from __future__ import annotations

from greenlm.compress import distill, layers, prune, quant_awq, quant_gptq, quant_rtn, structured
from greenlm.compress.base import _REGISTRY, CompressContext, StepConfig, StepReport
from greenlm.errors import GreenlmError

MODULES = (distill, layers, prune, quant_awq, quant_gptq, quant_rtn, structured)


def method_names() -> list[str]:
    return sorted(_REGISTRY)


def config_class(method: str) -> type[StepConfig]:
    try:
        return _REGISTRY[method][0]
    except KeyError:
        raise GreenlmError(
            f"unknown compression method '{method}': choose one of {', '.join(method_names())}"
        ) from None


def apply_step(model, step: StepConfig, ctx: CompressContext) -> StepReport:
    """Apply one step to `model` in place."""
    return _REGISTRY[step.method][1](model, step, ctx)
