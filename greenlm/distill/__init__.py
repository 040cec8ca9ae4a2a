"""`greenlm distill`: heal a cut model from its teacher (the training itself is greenlm.train; the same
training as a recipe step is greenlm.compress.distill). `greenlm.distill(DistillConfig(...))` runs the verb."""

from greenlm._lazy import lazy

__getattr__, __dir__, __all__ = lazy(
    __name__,
    {
        "DistillConfig": "greenlm.distill.config",
        "DistillResult": "greenlm.distill.runner",
        "distill": "greenlm.distill.runner",
    },
    call="greenlm.distill.runner:distill",
)
