"""EnergyCallback's values reach the Trainer's own reporting integrations (`report_to`), which the Trainer
registers before any callback a user passes: a real Trainer with `report_to=["tensorboard"]`, offline, and the
energy scalars read back from the event files TensorBoard writes."""

from __future__ import annotations

import importlib.util
import struct
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

from greenlm.energy import EnergySettings
from greenlm.train import EnergyCallback

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("tensorboardX") is None and importlib.util.find_spec("tensorboard") is None,
    reason="neither tensorboardX nor tensorboard is installed (the dev extra installs tensorboardX)",
)


def event_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] of every scalar in the event files under `logdir`, read as TensorBoard reads
    them: TFRecord frames (u64 length, u32 crc, Event proto, u32 crc)."""
    from tensorboardX.proto import event_pb2

    scalars: dict[str, list[tuple[int, float]]] = {}
    files = sorted(logdir.rglob("events.out.tfevents.*"))
    assert files, f"no event file under {logdir}"
    for path in files:
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                if value.HasField("simple_value"):  # add_text summaries carry strings: not scalars
                    scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def _rows(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    ids = tokenizer("The for statement is used to iterate over the elements of a sequence. " * 20)[
        "input_ids"
    ]
    return [{"input_ids": ids[i : i + 16], "labels": ids[i : i + 16]} for i in range(0, 16 * 12, 16)]


def _args(tmp_path, report_to) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=6,
        logging_steps=2,
        per_device_train_batch_size=2,
        report_to=report_to,
        save_strategy="no",
        use_cpu=True,
        include_num_input_tokens_seen="all",
        disable_tqdm=True,
    )


@pytest.mark.parametrize("added", ["to the constructor", "by add_callback"])
def test_energy_scalars_reach_tensorboard(added, tiny_model_dir, tmp_path, monkeypatch):
    logdir = tmp_path / "tb"
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(logdir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    energy = EnergyCallback(forecast_after=0.3, energy=EnergySettings(meter="cpu-model"), store=False)
    torch.manual_seed(0)
    passed = [energy] if added == "to the constructor" else []
    trainer = Trainer(
        model=model,
        args=_args(tmp_path, ["tensorboard"]),
        train_dataset=_rows(tiny_model_dir),
        callbacks=passed,
    )
    if not passed:
        trainer.add_callback(energy)  # appended after every integration; moved when training begins
    trainer.train()

    scalars = event_scalars(logdir)
    steps = {tag: sorted({step for step, _v in entries}) for tag, entries in scalars.items()}
    # the Trainer's own scalars at steps 2, 4 and 6; the energy ones beside them at the same steps
    assert steps["train/loss"] == [2, 4, 6]
    for tag in ("train/energy_j", "train/step_energy_j", "train/carbon_g", "train/j_per_token"):
        assert steps.get(tag) == [2, 4, 6], (tag, sorted(scalars))
        assert all(v > 0 for _s, v in scalars[tag]), tag
    # the forecast, once 30% of the 6 planned steps are done
    assert steps["train/forecast_total_j"] == [2, 4, 6]
    # what TensorBoard holds is what the Trainer's history holds: every log, the end-of-training one included
    history = [(h["step"], h["energy_j"]) for h in trainer.state.log_history if "energy_j" in h]
    assert len(history) == 4
    assert [s for s, _v in scalars["train/energy_j"]] == [s for s, _v in history]
    assert [v for _s, v in scalars["train/energy_j"]] == pytest.approx([v for _s, v in history], rel=1e-6)


def test_the_callback_runs_first_from_the_trainers_construction(tiny_model_dir, tmp_path):
    """Ahead of the integrations in the Trainer's own list; the list the user passed is left as it was."""
    from transformers.integrations import TensorBoardCallback
    from transformers.trainer_callback import DefaultFlowCallback

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    energy, flow = (
        EnergyCallback(energy=EnergySettings(meter="cpu-model"), store=False),
        DefaultFlowCallback(),
    )
    mine = [flow, energy]
    trainer = Trainer(model=model, args=_args(tmp_path, ["tensorboard"]), train_dataset=[], callbacks=mine)
    order = trainer.callback_handler.callbacks
    assert order[0] is energy and any(isinstance(c, TensorBoardCallback) for c in order[1:])
    assert mine == [flow, energy]


def test_without_a_trainer_it_says_so_once(caplog):
    from transformers import TrainerControl, TrainerState

    energy = EnergyCallback(energy=EnergySettings(meter="cpu-model"), store=False)
    for _ in range(2):
        energy.on_init_end(None, TrainerState(), TrainerControl())
    warned = [r for r in caplog.records if "could not place itself" in r.getMessage()]
    assert len(warned) == 1
