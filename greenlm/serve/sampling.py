"""Choosing the next token from a logits row: greedy at temperature 0, otherwise temperature and nucleus
(top-p) sampling from a per-request generator, so a request with a `seed` gets the same text every time."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from greenlm.errors import GreenlmError

MAX_STOP_STRINGS = 4  # as OpenAI's API


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0  # 0: greedy (argmax)
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False  # keep generating past end-of-text (load tests want fixed lengths)

    def __post_init__(self) -> None:
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise GreenlmError(f"max_tokens must be a whole number of at least 1, got {self.max_tokens!r}")
        if not (math.isfinite(self.temperature) and 0 <= self.temperature <= 2):
            raise GreenlmError(f"temperature must be from 0 to 2, got {self.temperature!r}")
        if not (math.isfinite(self.top_p) and 0 < self.top_p <= 1):
            raise GreenlmError(f"top_p must be greater than 0 and at most 1, got {self.top_p!r}")
        if len(self.stop) > MAX_STOP_STRINGS or any(not s for s in self.stop):
            raise GreenlmError(f"stop takes at most {MAX_STOP_STRINGS} non-empty strings")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def generator(self) -> np.random.Generator | None:
        return None if self.greedy else np.random.default_rng(self.seed)


def sample(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator | None) -> int:
    """The next token id from one float logits row (which may be a view of the engine's buffer: not
    modified). Greedy is one argmax. Otherwise the softmax is taken in float32 and a token drawn by inverse
    CDF (one uniform number, one cumulative sum); top-p sorts only the most likely tokens, widening the
    candidate set until it holds the nucleus, instead of the whole vocabulary."""
    if params.greedy or rng is None:
        return int(np.argmax(logits))
    weights = np.asarray(logits, dtype=np.float32) * np.float32(1.0 / params.temperature)
    weights -= weights.max()
    np.exp(weights, out=weights)
    if params.top_p < 1.0:
        return _sample_nucleus(weights, params.top_p, rng)
    return _draw(weights, np.arange(len(weights)), rng)


NUCLEUS_FIRST_CANDIDATES = 256  # most nuclei of a trained model fit; the set grows x8 when one does not


def _sample_nucleus(weights: np.ndarray, top_p: float, rng: np.random.Generator) -> int:
    vocab = len(weights)
    goal = top_p * float(weights.sum(dtype=np.float64))
    k = min(vocab, NUCLEUS_FIRST_CANDIDATES)
    while True:
        top = np.argpartition(weights, vocab - k)[vocab - k :] if k < vocab else np.arange(vocab)
        order = top[np.argsort(-weights[top], kind="stable")]
        mass = np.cumsum(weights[order], dtype=np.float64)
        if mass[-1] >= goal or k == vocab:
            break
        k = min(vocab, k * 8)
    # the smallest prefix whose mass reaches top_p (at least one token)
    keep = order[: int(np.searchsorted(mass, goal)) + 1]
    return _draw(weights[keep], keep, rng)


def _draw(weights: np.ndarray, ids: np.ndarray, rng: np.random.Generator) -> int:
    cdf = np.cumsum(weights, dtype=np.float64)
    at = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
    return int(ids[min(at, len(ids) - 1)])
