"""Learning-rate schedule: linear warm-up, then cosine decay to a floor.

A pure function of (step, plan) rather than a stateful scheduler object: a wall-clock budget re-plans the
total number of steps once it knows how long a step takes, and a resumed run recomputes the same rate from
the step count alone, so there is no scheduler state that could drift from the checkpoint.
"""

from __future__ import annotations

import math


def warmup_steps_for(total_steps: int, warmup_fraction: float) -> int:
    """Warm-up length for a plan of `total_steps`: `warmup_fraction` of it, at least one step."""
    return max(1, math.ceil(warmup_fraction * total_steps)) if warmup_fraction > 0 else 0


def lr_factor(step: int, *, warmup_steps: int, total_steps: int, min_ratio: float = 0.1) -> float:
    """Multiplier of the peak learning rate for 0-based optimizer step `step`.

    Warm-up: (step + 1) / warmup_steps, so the first step already learns. Then a half cosine from 1 down to
    `min_ratio` at the last planned step; steps past the plan stay at `min_ratio`.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if not 0.0 <= min_ratio <= 1.0:
        raise ValueError(f"min_ratio must be in [0, 1], got {min_ratio}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = total_steps - warmup_steps
    if decay_steps <= 1:
        return 1.0 if step < total_steps else min_ratio
    progress = min(1.0, (step - warmup_steps) / (decay_steps - 1))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
