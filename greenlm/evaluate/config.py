"""What `greenlm eval` evaluates and how: validated once, before anything heavy is loaded."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from greenlm.engines import ENGINE_NAMES
from greenlm.errors import GreenlmError
from greenlm.evaluate.reference import (
    DEFAULT_MAX_EVAL_TOKENS,
    DEFAULT_TAIL_SAMPLES,
    DEFAULT_TOP_K,
    DEFAULT_WINDOW_TOKENS,
    validate_window_settings,
)

DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class EvalConfig:
    model: str | None = (
        None  # built-in name, HF directory (a variant too) or .gguf; None = the built-in model
    )
    reference: str | None = None  # None: a variant's parent, else perplexity only
    use_parent_reference: bool = True  # a variant directory's parent is the default reference
    text: str | None = None  # .txt / .jsonl; None = the built-in corpus. Only its evaluation split is read.
    engine: str = "transformers"  # runs the model being evaluated
    reference_engine: str = "transformers"  # runs the reference (float32), whatever engine the model uses
    threads: int | None = None
    device: str = "cpu"
    dtype: str = "float32"  # of the evaluated model; the reference always runs in float32
    window_tokens: int = DEFAULT_WINDOW_TOKENS
    max_eval_tokens: int | None = DEFAULT_MAX_EVAL_TOKENS  # tokens fed per model; None = the whole split
    top_k: int = DEFAULT_TOP_K  # reference tokens kept per position for the KLD
    tail_samples: int = DEFAULT_TAIL_SAMPLES  # tokens sampled from the reference's tail per position
    batch_windows: int = 1  # windows per forward pass (more helps on a GPU)
    use_cache: bool = True  # read and write cached statistics

    def __post_init__(self) -> None:
        validate_window_settings(
            self.window_tokens, self.max_eval_tokens, self.top_k, self.batch_windows, self.tail_samples
        )
        for flag, name in (("--engine", self.engine), ("--reference-engine", self.reference_engine)):
            if name not in ENGINE_NAMES:
                raise GreenlmError(
                    f"unknown engine '{name}' for {flag}: choose one of {', '.join(ENGINE_NAMES)}"
                )
        if self.dtype not in DTYPES:
            raise GreenlmError(f"unknown dtype '{self.dtype}': use {', '.join(DTYPES)}")
        if self.threads is not None and self.threads < 1:
            raise GreenlmError(f"--threads must be at least 1, got {self.threads}")
        if self.reference is not None and not self.reference.strip():
            raise GreenlmError("--reference is empty: pass a model name or path, or leave it out")

    def to_dict(self) -> dict:
        return asdict(self)
