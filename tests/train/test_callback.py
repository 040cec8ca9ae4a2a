"""EnergyCallback inside a real transformers Trainer: energy, carbon and the forecast reach what every
logging integration receives and the Trainer's log history; one store row per run."""

from __future__ import annotations

import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainerCallback, TrainingArguments

from greenlm.energy.settings import EnergySettings
from greenlm.store import Store
from greenlm.train import EnergyCallback


class Recorder(TrainerCallback):
    """Stands in for TensorBoard/W&B/MLflow: records each log as it is handed to the integrations."""

    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs or {}))


def test_callback_logs_into_a_real_trainer(tiny_model_dir, tmp_path, monkeypatch):
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    ids = tokenizer("The for statement is used to iterate over the elements of a sequence. " * 20)[
        "input_ids"
    ]
    rows = [{"input_ids": ids[i : i + 16], "labels": ids[i : i + 16]} for i in range(0, 16 * 12, 16)]
    recorder, energy = (
        Recorder(),
        EnergyCallback(forecast_after=0.3, energy=EnergySettings(meter="cpu-model")),
    )
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=6,
        logging_steps=2,
        per_device_train_batch_size=2,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        include_num_input_tokens_seen="all",
        disable_tqdm=True,
    )
    torch.manual_seed(0)
    trainer = Trainer(model=model, args=args, train_dataset=rows, callbacks=[recorder, energy])
    trainer.train()

    step_logs = [log for log in recorder.logs if "loss" in log]
    assert len(step_logs) == 3
    for log in step_logs:  # the recorder was registered first, yet sees what the callback adds
        assert (
            log["energy_j"] > 0
            and log["carbon_g"] > 0
            and log["step_energy_j"] > 0
            and log["j_per_token"] > 0
        )
    assert "forecast_total_j" not in step_logs[0] or step_logs[0]["forecast_total_j"] > 0
    assert (
        step_logs[-1]["forecast_total_low_j"]
        <= step_logs[-1]["forecast_total_j"]
        <= step_logs[-1]["forecast_total_high_j"]
    )
    assert step_logs[-1]["energy_j"] >= step_logs[0]["energy_j"]
    history = [h for h in trainer.state.log_history if "loss" in h]
    assert all("energy_j" in h and "forecast_total_j" in h for h in history[1:])

    record = energy.result
    assert record["steps"] == 6 and record["steps_measured"] == 6 and record["forecast"]["steps_done"] == 2
    assert record["forecast_error_pct"] is not None and record["meter"] == "cpu-model"
    with Store() as store:
        stored = [json.loads(r["record_json"]) for r in store.runs(kind="train")]
    assert [r["run_id"] for r in stored] == [record["run_id"]]
