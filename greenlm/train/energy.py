"""Training energy: every optimizer step is a meter window, the whole run is one more, and the forecast
(greenlm.train.forecast) is made from the steps once a warm-up fraction of the plan is done.

Used by distillation and by the transformers Trainer callback alike; it knows only the Meter interface.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from greenlm.energy.base import Measurement, Meter, Reading
from greenlm.train.forecast import (
    DEFAULT_FORECAST_AFTER,
    Forecast,
    check_forecast_after,
    forecast_energy,
    forecast_step,
)


@dataclass(frozen=True)
class StepEnergy:
    step: int  # 1-based optimizer step
    energy_j: float
    duration_s: float
    tokens: int | None  # training tokens the step consumed, when known

    def to_dict(self) -> dict:
        return asdict(self)


class TrainingEnergy:
    """The energy of one training session: a meter window per optimizer step and one over the whole session,
    plus what earlier sessions of the run spent (`prior_j`) and the steps they completed (`steps`), so a
    resumed run forecasts and totals as one."""

    def __init__(
        self,
        meter: Meter,
        *,
        total_steps: int | None = None,
        forecast_after: float = DEFAULT_FORECAST_AFTER,
        prior_j: float = 0.0,
        steps: list[StepEnergy] | None = None,
        first_forecast: Forecast | None = None,
    ) -> None:
        check_forecast_after(forecast_after)
        self.meter = meter
        self.total_steps = total_steps
        self.forecast_after = forecast_after
        self.prior_j = prior_j
        self.steps: list[StepEnergy] = list(steps or [])
        self.first_forecast = first_forecast
        self.latest_forecast: Forecast | None = None
        self._run_start: Reading = meter.begin_window()
        self._step_start: Reading | None = None

    # --- windows ----------------------------------------------------------------------------------------

    def begin_step(self) -> None:
        self._step_start = self.meter.begin_window()

    def end_step(self, step: int, tokens: int | None = None) -> StepEnergy:
        if self._step_start is None:
            raise RuntimeError("end_step without begin_step")
        m = self.meter.end_window(self._step_start)
        self._step_start = None
        record = StepEnergy(step=step, energy_j=m.total_j, duration_s=m.duration_s, tokens=tokens)
        self.steps.append(record)
        return record

    def session(self) -> Measurement:
        """This session's run window so far (everything since the ledger was made)."""
        return self.meter.end_window(self._run_start)

    def energy_so_far_j(self) -> float:
        return self.prior_j + self.session().total_j

    # --- forecast ---------------------------------------------------------------------------------------

    def forecast_due(self) -> bool:
        if not self.total_steps or not self.steps:
            return False
        return len(self.steps) >= forecast_step(self.total_steps, self.forecast_after)

    def update_forecast(self, steps_done: int | None = None, *, force: bool = False) -> Forecast | None:
        """The forecast from every step measured so far, once the warm-up fraction is done (else None;
        `force` makes it now). The first one made is kept as `first_forecast`: the one whose error the run
        reports at the end."""
        if not self.steps or not self.total_steps or not (force or self.forecast_due()):
            return None
        done = self.steps[-1].step if steps_done is None else steps_done
        forecast = forecast_energy(
            [s.energy_j for s in self.steps],
            energy_so_far_j=self.energy_so_far_j(),
            steps_done=min(done, self.total_steps),
            total_steps=self.total_steps,
            step_durations_s=[s.duration_s for s in self.steps],
        )
        self.latest_forecast = forecast
        if self.first_forecast is None:
            self.first_forecast = forecast
        return forecast

    # --- summaries --------------------------------------------------------------------------------------

    def step_summary(self) -> dict:
        """J per step and per training token over the measured steps."""
        if not self.steps:
            return {"steps_measured": 0}
        energy = sum(s.energy_j for s in self.steps)
        tokens = [s.tokens for s in self.steps if s.tokens]
        ordered = sorted(s.energy_j for s in self.steps)
        return {
            "steps_measured": len(self.steps),
            "steps_energy_j": energy,
            "j_per_step_mean": energy / len(self.steps),
            "j_per_step_median": ordered[len(ordered) // 2],
            "j_per_step_min": ordered[0],
            "j_per_step_max": ordered[-1],
            "j_per_training_token": energy / sum(tokens) if len(tokens) == len(self.steps) else None,
        }


def training_summary(outcomes: list[dict]) -> dict:
    """One line of totals over training outcomes (`TrainOutcome.to_dict()`), for a variant's manifest: what
    payback and the optimizer read without digging through the step reports."""
    if not outcomes:
        return {}
    energies = [o["energy"] for o in outcomes]
    meters = sorted({e["meter"] for e in energies})
    sources = {e["energy_source"] for e in energies}
    return {
        "energy_j": sum(e["energy_j"] for e in energies),
        "carbon_g": sum(e["carbon_g"] for e in energies),
        "meter": "+".join(meters),
        "energy_source": "estimated" if "estimated" in sources else "measured",
        "intensity_source": energies[0]["intensity_source"],
        "steps": sum(o["steps"] for o in outcomes),
        "tokens": sum(o["tokens"] for o in outcomes),
        "training_s": sum(o["training_s"] for o in outcomes),
        "forecast_error_pct": energies[-1].get("forecast_error_pct"),
        "scope": energies[-1].get("scope"),
    }
