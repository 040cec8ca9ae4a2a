"""Training energy forecast: pure arithmetic over the energy of the steps measured so far.

After a warm-up fraction of the planned steps (carbontracker forecasts after its first epochs):

    E_total = E_so_far + remaining steps x median step energy

with a range from the spread of the step energies (their 10th and 90th percentiles in place of the median).
E_so_far is everything the run has spent, not only the steps (data preparation, checkpoints), so the forecast
is of the whole training run. The median, not the mean, so one slow step (a checkpoint, a busy neighbour)
does not drag the forecast.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

DEFAULT_FORECAST_AFTER = 0.1  # fraction of the planned steps measured before forecasting
LOW_QUANTILE = 0.1
HIGH_QUANTILE = 0.9


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default method) of a non-empty sequence, `q` in [0, 1]."""
    if not values:
        raise ValueError("quantile of no values")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile q must be in [0, 1], got {q}")
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def check_forecast_after(after_fraction: float) -> None:
    """The fraction of the plan after which the forecast is made must be in (0, 1]."""
    if not 0.0 < after_fraction <= 1.0:
        raise ValueError(f"forecast_after must be a fraction in (0, 1], got {after_fraction}")


def forecast_step(total_steps: int, after_fraction: float) -> int:
    """The step after which the forecast is made: `after_fraction` of the plan, at least 1 step."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be at least 1, got {total_steps}")
    if not 0.0 < after_fraction <= 1.0:
        raise ValueError(f"the forecast fraction must be in (0, 1], got {after_fraction}")
    return min(total_steps, max(1, math.ceil(after_fraction * total_steps)))


@dataclass(frozen=True)
class Forecast:
    """What the rest of a training run will cost, made after `steps_done` of `total_steps` steps."""

    steps_done: int
    total_steps: int
    energy_so_far_j: float
    step_energy_median_j: float
    step_energy_low_j: float  # LOW_QUANTILE of the step energies
    step_energy_high_j: float  # HIGH_QUANTILE
    total_j: float
    total_low_j: float
    total_high_j: float
    step_duration_median_s: float | None = None
    eta_s: float | None = None  # remaining steps x median step duration

    @property
    def remaining_steps(self) -> int:
        return self.total_steps - self.steps_done

    def to_dict(self) -> dict:
        return asdict(self) | {"remaining_steps": self.remaining_steps}

    @classmethod
    def from_dict(cls, data: dict) -> Forecast:
        return cls(**{k: v for k, v in data.items() if k != "remaining_steps"})


def forecast_energy(
    step_energies_j: Sequence[float],
    *,
    energy_so_far_j: float,
    steps_done: int,
    total_steps: int,
    step_durations_s: Sequence[float] | None = None,
) -> Forecast:
    """Forecast the total energy of a run that has done `steps_done` of `total_steps` steps, spending
    `energy_so_far_j`; `step_energies_j` are the measured steps' own energies (at least one)."""
    if not step_energies_j:
        raise ValueError("a forecast needs at least one measured step")
    if any(not (math.isfinite(e) and e >= 0) for e in step_energies_j):
        raise ValueError("step energies must be finite and >= 0")
    if not (math.isfinite(energy_so_far_j) and energy_so_far_j >= 0):
        raise ValueError(f"energy so far must be finite and >= 0, got {energy_so_far_j}")
    if not 0 <= steps_done <= total_steps:
        raise ValueError(f"steps_done ({steps_done}) must be between 0 and total_steps ({total_steps})")
    remaining = total_steps - steps_done
    median = quantile(step_energies_j, 0.5)
    low = quantile(step_energies_j, LOW_QUANTILE)
    high = quantile(step_energies_j, HIGH_QUANTILE)
    duration = quantile(step_durations_s, 0.5) if step_durations_s else None
    return Forecast(
        steps_done=steps_done,
        total_steps=total_steps,
        energy_so_far_j=energy_so_far_j,
        step_energy_median_j=median,
        step_energy_low_j=low,
        step_energy_high_j=high,
        total_j=energy_so_far_j + remaining * median,
        total_low_j=energy_so_far_j + remaining * low,
        total_high_j=energy_so_far_j + remaining * high,
        step_duration_median_s=duration,
        eta_s=None if duration is None else remaining * duration,
    )


def forecast_error_pct(forecast_total_j: float, actual_total_j: float) -> float | None:
    """(forecast - actual) / actual in percent: positive means the forecast was too high."""
    if actual_total_j <= 0:
        return None
    return (forecast_total_j - actual_total_j) / actual_total_j * 100.0


def steps_within(remaining_s: float, step_duration_s: float) -> int:
    """How many more steps of `step_duration_s` fit in `remaining_s` (a wall-clock budget's plan)."""
    if step_duration_s <= 0:
        raise ValueError(f"step duration must be > 0, got {step_duration_s}")
    return max(0, math.floor(remaining_s / step_duration_s))
