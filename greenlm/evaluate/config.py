"""What `greenlm eval` evaluates and how: validated once, before anything heavy is loaded."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from greenlm.engines.names import ENGINE_NAMES, check_device
from greenlm.errors import GreenlmError

DTYPES = ("float32", "bfloat16", "float16")
DEFAULT_WINDOW_TOKENS = 512
# 16 windows of 512: about 12 s per pass of the built-in 135M model on 2 CPU cores (measured ~700 tokens/s),
# enough to resolve a 1 % perplexity increase (the paired per-window standard error is ~0.3 points).
DEFAULT_MAX_EVAL_TOKENS = 8192
DEFAULT_TOP_K = 128
# Sampled tail tokens per position. Measured on the built-in model: the top 128 tokens hold ~93% of the mass,
# and the top-k + rest bound reads ~10% below the exact KL; with 64 tail samples the estimate is within ~1%.
DEFAULT_TAIL_SAMPLES = 64


def validate_window_settings(
    window_tokens: int,
    max_eval_tokens: int | None,
    top_k: int,
    batch_windows: int = 1,
    tail_samples: int = DEFAULT_TAIL_SAMPLES,
) -> None:
    if window_tokens < 2:
        raise GreenlmError(
            f"--window-tokens must be at least 2 (one prediction per window), got {window_tokens}"
        )
    if max_eval_tokens is not None and max_eval_tokens < window_tokens:
        raise GreenlmError(
            f"--max-eval-tokens {max_eval_tokens} is less than one window of {window_tokens} tokens: "
            "raise it or lower --window-tokens"
        )
    if top_k < 1:
        raise GreenlmError(f"--top-k must be at least 1, got {top_k}")
    if batch_windows < 1:
        raise GreenlmError(f"--batch-windows must be at least 1, got {batch_windows}")
    if tail_samples < 1:
        raise GreenlmError(f"--tail-samples must be at least 1, got {tail_samples}")


@dataclass
class EvalConfig:
    model: str | None = (
        None  # built-in name, HF directory (a variant too) or .gguf; None = the built-in model
    )
    reference: str | None = None  # None: a variant's parent, else perplexity only
    # A variant directory's parent is the default reference; False: perplexity only (then `reference` must
    # be None: asking for both is a contradiction).
    use_parent_reference: bool = True
    text: str | None = None  # .txt / .jsonl; None = the built-in corpus. Only its evaluation split is read.
    engine: str | None = None  # runs the model: None = as `optimize --out` saved it, else transformers
    reference_engine: str = "transformers"  # runs the reference (float32), whatever engine the model uses
    threads: int | None = None
    device: str = "auto"  # auto: a GPU when the engine can use one here, else the CPU (model and reference)
    dtype: str = "float32"  # of the evaluated model; the reference always runs in float32
    window_tokens: int = DEFAULT_WINDOW_TOKENS
    max_eval_tokens: int | None = DEFAULT_MAX_EVAL_TOKENS  # tokens fed per model; None or 0 = the whole split
    top_k: int = DEFAULT_TOP_K  # reference tokens kept per position for the KLD
    tail_samples: int = DEFAULT_TAIL_SAMPLES  # tokens sampled from the reference's tail per position
    batch_windows: int = 1  # windows per forward pass (more helps on a GPU)
    use_cache: bool = True  # read and write cached statistics

    def __post_init__(self) -> None:
        if self.max_eval_tokens is not None and self.max_eval_tokens < 0:
            raise GreenlmError(
                f"--max-eval-tokens must be positive (or 0 for the whole split), got {self.max_eval_tokens}"
            )
        self.max_eval_tokens = self.max_eval_tokens or None
        if not self.use_parent_reference and self.reference is not None:
            raise GreenlmError("--reference and --no-reference contradict each other: pass one")
        validate_window_settings(
            self.window_tokens, self.max_eval_tokens, self.top_k, self.batch_windows, self.tail_samples
        )
        for flag, name in (("--engine", self.engine), ("--reference-engine", self.reference_engine)):
            if name is not None and name not in ENGINE_NAMES:
                raise GreenlmError(
                    f"unknown engine '{name}' for {flag}: choose one of {', '.join(ENGINE_NAMES)}"
                )
        if self.dtype not in DTYPES:
            raise GreenlmError(f"unknown dtype '{self.dtype}': use {', '.join(DTYPES)}")
        check_device(self.device)
        if self.threads is not None and self.threads < 1:
            raise GreenlmError(f"--threads must be at least 1, got {self.threads}")
        if self.reference is not None and not self.reference.strip():
            raise GreenlmError("--reference is empty: pass a model name or path, or leave it out")

    def to_dict(self) -> dict:
        return asdict(self)
