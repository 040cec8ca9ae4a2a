"""Pick the stepper (serving's step-level batching) for a loaded engine."""

from __future__ import annotations

from greenlm.engines.base import Engine
from greenlm.engines.llamacpp_stepper import LlamaCppStepper
from greenlm.engines.stepper import Stepper
from greenlm.engines.transformers_stepper import TransformersStepper
from greenlm.errors import GreenlmError

STEPPERS: dict[str, type[Stepper]] = {"llamacpp": LlamaCppStepper, "transformers": TransformersStepper}


def open_stepper(
    engine: Engine, *, slots: int, step_tokens: int, context_tokens: int | None = None
) -> Stepper:
    """The stepper for `engine`: `slots` sequences of at most `context_tokens` each (default: the engine's)."""
    kind = STEPPERS.get(engine.name)
    if kind is None:
        raise GreenlmError(f"the {engine.name} engine cannot serve (no step-level batching)")
    return kind(engine, slots=slots, step_tokens=step_tokens, context_tokens=context_tokens)
