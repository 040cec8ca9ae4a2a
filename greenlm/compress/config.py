"""What `greenlm compress` takes, with the CLI's defaults: numbers and paths checked on construction (no torch
here), the recipe parsed first thing in `compress()`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from greenlm.errors import GreenlmError

DEFAULT_EVAL_TOKENS = 4096  # 8 windows of 512: ~5 s for the built-in model on 2 cores
DEFAULT_CALIBRATION_SAMPLES = 64
DEFAULT_CALIBRATION_TOKENS = 256


@dataclass
class CompressConfig:
    # A Recipe, one step, step dicts, or a YAML path; parsed (and refused if wrong) before any model loads.
    recipe: Any
    out: str  # the variant directory to create; must not exist
    model: str | None = None  # parent: built-in name, HF directory (a variant too) or .gguf
    text: str | None = None  # calibration comes from its calibration split, quality from its evaluation split
    calibration_samples: int = DEFAULT_CALIBRATION_SAMPLES
    calibration_tokens: int = DEFAULT_CALIBRATION_TOKENS
    evaluate: bool = True  # measure quality against the parent at creation
    eval_tokens: int = DEFAULT_EVAL_TOKENS
    threads: int | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        if not isinstance(self.out, (str, Path)) or not str(self.out).strip():
            raise GreenlmError("--out is required: the directory to write the variant to")
        check_data_flags(self)


def check_data_flags(config) -> None:
    """The calibration, evaluation and thread numbers that compress and distill both take."""
    for flag, value, low in (
        ("--calibration-samples", config.calibration_samples, 1),
        ("--calibration-tokens", config.calibration_tokens, 2),
        ("--eval-tokens", config.eval_tokens, 2),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise GreenlmError(f"{flag} must be a whole number of at least {low}, got {value!r}")
    if config.threads is not None and config.threads < 1:
        raise GreenlmError(f"--threads must be at least 1, got {config.threads}")
