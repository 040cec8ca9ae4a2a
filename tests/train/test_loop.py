"""The training loop on tiny models: the loss goes down, a killed run resumes exactly, energy is accounted."""

from __future__ import annotations

import contextlib
import time

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from greenlm.compress.layers import remove_layers
from greenlm.energy.settings import EnergySettings
from greenlm.train.checkpoint import RunDir
from greenlm.train.data import TrainingData, epoch_order, micro_batch_indices, text_windows
from greenlm.train.loop import TrainJob, _Plan, _teacher_cache, train
from greenlm.train.losses import distill_loss
from greenlm.train.settings import TrainSettings

from .conftest import FAST


def pair(path):
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    teacher = AutoModelForCausalLM.from_pretrained(str(path))
    student = AutoModelForCausalLM.from_pretrained(str(path))
    remove_layers(student, [1])
    return teacher, student, tokenizer


def run(teacher, student, data, settings, **job):
    energy = EnergySettings(meter="cpu-model")
    return train(teacher, student, data, settings, TrainJob(energy.open_meter(), energy.carbon(), **job))


def held_out_loss(teacher, student, windows) -> float:
    with torch.no_grad():
        return float(
            distill_loss(
                student(input_ids=windows).logits, teacher(input_ids=windows).logits, loss="forward-kl"
            )
        )


def test_data_order_is_a_function_of_seed_and_epoch():
    assert torch.equal(epoch_order(10, 3, 7), epoch_order(10, 3, 7))
    assert not torch.equal(epoch_order(10, 0, 7), epoch_order(10, 1, 7))
    first, epoch = micro_batch_indices(10, 3, 0, seed=1)
    assert epoch == 0 and len(first) == 3
    assert micro_batch_indices(10, 3, 3, seed=1)[1] == 1  # 3 full batches of 3 per epoch of 10 windows


def test_loss_decreases_and_every_step_is_metered(tiny_model_dir):
    teacher, student, tokenizer = pair(tiny_model_dir)
    data = text_windows(tokenizer, None, FAST["seq_len"])
    probe = data.windows[-8:]  # the same windows before and after
    before = held_out_loss(teacher, student, probe)
    outcome = run(teacher, student, data, TrainSettings(steps=30, loss="forward-kl", **FAST))
    assert held_out_loss(teacher, student, probe) < 0.8 * before
    assert outcome.steps == 30 and outcome.tokens == 30 * 2 * 32 and outcome.stopped_by == "budget"
    e = outcome.energy
    assert e["meter"] == "cpu-model" and e["energy_source"] == "estimated"
    assert e["steps_measured"] == 30 and 0 < e["steps_energy_j"] <= e["energy_j"]
    assert e["j_per_training_token"] == pytest.approx(e["steps_energy_j"] / outcome.tokens)
    f = e["forecast"]
    assert f["steps_done"] == 3 and f["total_steps"] == 30  # made after 10% of the plan
    assert e["forecast_error_pct"] is not None and e["carbon_g"] > 0
    # the embedding and output head (tied) stay the teacher's by default
    assert torch.equal(student.get_input_embeddings().weight, teacher.get_input_embeddings().weight)


def test_topk_cache_and_teacher_text_train_too(tiny_model_dir, tmp_path, small_text):
    teacher, student, tokenizer = pair(tiny_model_dir)
    full = text_windows(tokenizer, str(small_text), FAST["seq_len"])
    data = TrainingData(full.windows[:5], full.text, full.text_fingerprint, 5)  # 8 windows with the teacher's
    run_dir = RunDir.create(tmp_path / "ckpt", {"test": 1}, {})
    settings = {**FAST, "teacher_topk": 8}
    outcome = run(
        teacher,
        student,
        data,
        TrainSettings(steps=6, teacher_generate=3, loss="jsd", **settings),
        run=run_dir,
    )
    assert outcome.data["teacher_generated_windows"] == 3 and outcome.data["windows"] == 8
    assert outcome.data["teacher"].startswith("cached top-8") and outcome.epochs == 1.5
    assert run_dir.load_tensors("teacher-topk.safetensors")["ids"].shape == (8, 32, 8)
    assert outcome.loss_last is not None and outcome.loss_last >= 0
    # less than one epoch: the cache would never be reused, so the teacher runs alongside the student
    _, student, _ = pair(tiny_model_dir)
    short = run(teacher, student, data, TrainSettings(steps=1, **settings))
    assert short.data["teacher"].startswith("on the fly") and "at most one epoch" in short.data["teacher"]


def test_a_killed_run_resumes_exactly(tiny_model_dir, tmp_path):
    settings = TrainSettings(steps=6, **FAST)
    teacher, straight, tokenizer = pair(tiny_model_dir)
    data = text_windows(tokenizer, None, FAST["seq_len"])
    whole = run(
        teacher, straight, data, settings, run=RunDir.create(tmp_path / "a", {"r": 1}, {}), checkpoint_steps=2
    )

    _, killed, _ = pair(tiny_model_dir)
    run_dir = RunDir.create(tmp_path / "b", {"r": 1}, {})

    def kill_at_step_5(event):
        if event.what == "training" and event.done == 5:
            raise KeyboardInterrupt  # after step 5 ran: it is lost, the checkpoint of step 4 is not

    with pytest.raises(KeyboardInterrupt):
        run(teacher, killed, data, settings, run=run_dir, checkpoint_steps=2, progress=kill_at_step_5)
    assert run_dir.latest().name == "step-000004"

    _, resumed, _ = pair(tiny_model_dir)  # a fresh student: the checkpoint supplies its weights
    again = run(teacher, resumed, data, settings, run=run_dir, resume=True, checkpoint_steps=2)
    assert again.steps == 6 and again.sessions == 2 and again.losses == whole.losses
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    # the energy of the lost step 5 still counts: the first session's total is carried over
    assert again.energy["earlier_sessions_j"] > 0
    assert again.energy["energy_j"] > again.energy["earlier_sessions_j"]


def test_a_wall_clock_budget_is_planned_then_replanned(tiny_model_dir, small_text):
    teacher, student, tokenizer = pair(tiny_model_dir)
    data = text_windows(tokenizer, str(small_text), FAST["seq_len"])
    outcome = run(teacher, student, data, TrainSettings(minutes=0.05, **FAST))
    plan = outcome.plan
    assert plan["budget"] == {"minutes": 0.05} and plan["probe_step_s"] > 0 and plan["first_plan_steps"] >= 1
    assert plan["replanned_at_step"] >= 1 and plan["total_steps"] == outcome.planned_steps
    assert outcome.steps == outcome.planned_steps or outcome.stopped_by == "time limit"
    assert outcome.energy["forecast"]["steps_done"] == plan["replanned_at_step"]  # forecast from the re-plan


def test_the_cache_gives_way_when_its_pass_would_eat_the_wall_clock_budget(tiny_model_dir, small_text):
    teacher, _, tokenizer = pair(tiny_model_dir)
    windows = text_windows(tokenizer, str(small_text), FAST["seq_len"]).windows
    settings = TrainSettings(minutes=1e-6, **{**FAST, "teacher_topk": 8})  # any pass is over a quarter of it
    notes = []
    topk, mode = _teacher_cache(
        teacher, windows, settings, _Plan(settings), time.perf_counter(), contextlib.nullcontext,
        lambda _s: None, notes.append,
    )  # fmt: skip
    assert topk is None and mode.startswith("on the fly") and "25%" in mode and notes == [f"teacher: {mode}"]
