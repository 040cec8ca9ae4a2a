"""What `greenlm measure` runs: prompts, phase windows, repeats, and the result record."""

from greenlm.workload.config import MeasureConfig
from greenlm.workload.result import MeasureResult
from greenlm.workload.runner import run_measure

__all__ = ["MeasureConfig", "MeasureResult", "run_measure"]
