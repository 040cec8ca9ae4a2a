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
    """The next token id from one float logits row."""
    if params.greedy or rng is None:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / params.temperature
    scaled -= scaled.max()
    probs = np.exp(scaled)
    probs /= probs.sum()
    if params.top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        cumulative = np.cumsum(probs[order])
        # the smallest prefix whose mass reaches top_p (at least one token)
        keep = order[: int(np.searchsorted(cumulative, params.top_p)) + 1]
        kept = probs[keep] / probs[keep].sum()
        return int(keep[rng.choice(len(keep), p=kept)])
    return int(rng.choice(len(probs), p=probs))
