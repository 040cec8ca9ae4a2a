"""Quality against the reference: perplexity, KL divergence and top-1 agreement on held-out text.

`evaluate(EvalConfig(...))` is what `greenlm eval` runs. Callers that keep a model loaded (the optimizer) use
`reference_stats(...)` once and `compare_to_reference(engine, stats, max_eval_tokens=...)` per screen or
full evaluation.
"""

from greenlm.evaluate.compare import compare_to_reference
from greenlm.evaluate.config import EvalConfig
from greenlm.evaluate.reference import (
    DEFAULT_MAX_EVAL_TOKENS,
    DEFAULT_TOP_K,
    DEFAULT_WINDOW_TOKENS,
    ReferenceStats,
    reference_stats,
)
from greenlm.evaluate.result import EvalResult, QualityStats
from greenlm.evaluate.runner import evaluate

__all__ = [
    "DEFAULT_MAX_EVAL_TOKENS",
    "DEFAULT_TOP_K",
    "DEFAULT_WINDOW_TOKENS",
    "EvalConfig",
    "EvalResult",
    "QualityStats",
    "ReferenceStats",
    "compare_to_reference",
    "evaluate",
    "reference_stats",
]
