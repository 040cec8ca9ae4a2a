"""Quality against the reference: perplexity, KL divergence and top-1 agreement on held-out text.

`evaluate(EvalConfig(...))` is what `greenlm eval` runs. Callers that keep a model loaded (the optimizer) use
`reference_stats(...)` once and `compare_to_reference(engine, stats, max_eval_tokens=...)` per screen or
full evaluation.
"""

from greenlm._lazy import lazy

__getattr__, __dir__, __all__ = lazy(
    __name__,
    {
        "DEFAULT_MAX_EVAL_TOKENS": "greenlm.evaluate.config",
        "DEFAULT_TAIL_SAMPLES": "greenlm.evaluate.config",
        "DEFAULT_TOP_K": "greenlm.evaluate.config",
        "DEFAULT_WINDOW_TOKENS": "greenlm.evaluate.config",
        "EvalConfig": "greenlm.evaluate.config",
        "EvalResult": "greenlm.evaluate.result",
        "QualityStats": "greenlm.evaluate.result",
        "ReferenceStats": "greenlm.evaluate.reference",
        "compare_to_reference": "greenlm.evaluate.compare",
        "evaluate": "greenlm.evaluate.runner",
        "reference_stats": "greenlm.evaluate.reference",
    },
    call="greenlm.evaluate.runner:evaluate",
)
