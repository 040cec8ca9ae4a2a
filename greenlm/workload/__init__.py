"""What `greenlm measure` runs: prompts, prefill and decode windows, repeats, and the result record."""

from greenlm._lazy import lazy

__getattr__, __dir__, __all__ = lazy(
    __name__,
    {
        "MeasureConfig": "greenlm.workload.config",
        "MeasureResult": "greenlm.workload.result",
        "run_measure": "greenlm.workload.runner",
    },
)
