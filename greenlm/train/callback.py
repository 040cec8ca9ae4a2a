"""`EnergyCallback`: per-step energy, carbon and the total-energy forecast in any transformers Trainer's logs.

    trainer = Trainer(..., callbacks=[EnergyCallback(forecast_after=0.05)])

Every optimizer step is a meter window. Each time the Trainer logs, the callback adds

    energy_j            energy of the run so far (J)
    step_energy_j       mean energy of the optimizer steps since the previous log (J)
    carbon_g            carbon of the run so far (gCO2e)
    j_per_token         step energy per input token, when the Trainer counts tokens
    forecast_total_j    forecast energy of the whole run, with _low_j / _high_j, once `forecast_after` of the
                        planned steps are done (greenlm.train.forecast)
    forecast_carbon_g

so TensorBoard, W&B or MLflow receive them through their own integrations, and `state.log_history` keeps
them. At the end of training one row (kind "train") goes to the greenlm store.
"""

from __future__ import annotations

from transformers import TrainerCallback

from greenlm.energy.settings import EnergySettings
from greenlm.store import Store
from greenlm.train.callback_order import calling_handler, run_first
from greenlm.train.energy import TrainingEnergy
from greenlm.train.forecast import DEFAULT_FORECAST_AFTER, check_forecast_after, forecast_error_pct


class EnergyCallback(TrainerCallback):
    def __init__(
        self,
        *,
        forecast_after: float = DEFAULT_FORECAST_AFTER,
        name: str = "trainer",
        energy: EnergySettings | None = None,
        store: bool = True,
        db: str | None = None,
    ) -> None:
        """`energy`: the meter and carbon settings (default: auto, the world-average grid)."""
        check_forecast_after(forecast_after)
        self.forecast_after = forecast_after
        self.name = name
        self.energy = EnergySettings.coerce(energy)
        self.store = store
        self.db = db
        self.carbon = self.energy.carbon()  # a typo in the grid settings fails here, before training
        self.ledger: TrainingEnergy | None = None
        self.result: dict | None = None  # the stored record, after training ends
        self._logged_steps = 0
        self._tokens_seen = 0

    def _carbon(self, energy_j: float) -> float:
        return self.carbon.carbon_g(energy_j)

    def _run_before_loggers(self) -> None:
        """Move this callback to the front of the Trainer's list (callback_order.py): the reporting
        integrations (TensorBoard, W&B, MLflow) are registered before user callbacks and would otherwise write
        each log before we add to it."""
        run_first(self, calling_handler(depth=3))

    # --- Trainer events -----------------------------------------------------------------------------------

    def on_init_end(self, args, state, control, **kwargs):
        self._run_before_loggers()  # as soon as the Trainer is built: its callback list is then as it runs

    def on_train_begin(self, args, state, control, **kwargs):
        self.ledger = TrainingEnergy(
            self.energy.open_meter(), total_steps=state.max_steps or None, forecast_after=self.forecast_after
        )
        self._logged_steps = 0
        self._tokens_seen = state.num_input_tokens_seen or 0
        self._run_before_loggers()

    def on_step_begin(self, args, state, control, **kwargs):
        if self.ledger is not None:
            self.ledger.begin_step()

    def on_step_end(self, args, state, control, **kwargs):
        if self.ledger is None:
            return
        seen = state.num_input_tokens_seen or 0
        tokens = seen - self._tokens_seen if seen > self._tokens_seen else None
        self._tokens_seen = seen
        self.ledger.end_step(state.global_step, tokens=tokens)
        self.ledger.update_forecast(state.global_step)

    def values(self) -> dict[str, float]:
        """What the callback adds to a log now."""
        if self.ledger is None:
            return {}
        energy_j = self.ledger.energy_so_far_j()
        values = {"energy_j": energy_j, "carbon_g": self._carbon(energy_j)}
        recent = self.ledger.steps[self._logged_steps :]
        if recent:
            step_j = sum(s.energy_j for s in recent) / len(recent)
            values["step_energy_j"] = step_j
            tokens = [s.tokens for s in recent if s.tokens]
            if len(tokens) == len(recent):
                values["j_per_token"] = sum(s.energy_j for s in recent) / sum(tokens)
        forecast = self.ledger.latest_forecast
        if forecast is not None:
            values.update(
                forecast_total_j=forecast.total_j,
                forecast_total_low_j=forecast.total_low_j,
                forecast_total_high_j=forecast.total_high_j,
                forecast_carbon_g=self._carbon(forecast.total_j),
            )
        return values

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.ledger is None or logs is None:
            return
        values = self.values()
        self._logged_steps = len(self.ledger.steps)
        logs.update(values)
        # the Trainer copied the log into its history before calling us
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(values)

    def on_train_end(self, args, state, control, **kwargs):
        if self.ledger is None:
            return
        ledger, self.ledger = self.ledger, None
        session = ledger.session()
        first = ledger.first_forecast
        record = {
            "model": self.name,
            "kind": "train",
            "meter": session.meter,
            "energy_source": session.energy_source,
            "meter_note": ledger.meter.selection_note,
            "energy_j": session.total_j,
            "energy_by_domain_j": dict(session.energy_j),
            "duration_s": session.duration_s,
            "carbon_g": self._carbon(session.total_j),
            **self.carbon.to_dict(),
            "steps": state.global_step,
            "planned_steps": state.max_steps,
            **ledger.step_summary(),
            "forecast_after": self.forecast_after,
            "forecast": first.to_dict() if first else None,
            "forecast_error_pct": forecast_error_pct(first.total_j, session.total_j) if first else None,
        }
        ledger.meter.close()
        if self.store and state.is_world_process_zero:
            with Store(self.db) as store:
                record["run_id"] = store.add("train", record)
        self.result = record
