"""The distillation loop: a student learns the teacher's next-token distribution on calibration text, every
optimizer step inside its own meter window, with checkpoints a resumed run continues from exactly.

The loop knows models as torch modules and data as token windows; choosing the teacher and student, and
saving the result as a variant, is `greenlm.distill` (the verb) or `greenlm.compress.distill` (the step).
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from greenlm.energy.base import Meter
from greenlm.energy.carbon import CarbonRate, energy_kwh
from greenlm.io import noop
from greenlm.progress import Progress, ProgressEvent, no_progress, relabel
from greenlm.train.checkpoint import DATA_FILE, TOPK_FILE, RunDir
from greenlm.train.data import (
    CACHE_MAX_BUDGET_SHARE,
    CACHE_MAX_BYTES,
    TrainingData,
    batches_per_epoch,
    cache_bytes,
    micro_batch_indices,
    teacher_generate,
    teacher_topk_cache,
)
from greenlm.train.energy import StepEnergy, TrainingEnergy
from greenlm.train.forecast import Forecast, forecast_error_pct, quantile, steps_within
from greenlm.train.losses import TeacherTopK, distill_loss, next_token_ce
from greenlm.train.precision import autocast, resolve_precision
from greenlm.train.schedule import lr_factor, warmup_steps_for
from greenlm.train.settings import TrainSettings

ENERGY_SCOPE = (
    "the training run: data preparation (teacher generation, top-k cache), the step-time probe, every "
    "optimizer step and checkpoint; not model loading, quality evaluation or saving the variant"
)


@dataclass
class TrainOutcome:
    """What a training run did and what it cost (all sessions of a resumed run together)."""

    steps: int
    planned_steps: int
    stopped_by: str  # "budget" (the planned steps ran) or "time limit" (a wall-clock budget ran out first)
    tokens: int
    epochs: float
    training_s: float
    precision: str
    precision_note: str
    loss_first: float | None
    loss_last: float | None
    losses: list[float]
    plan: dict
    energy: dict
    data: dict
    sessions: int = 1
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["losses"] = _thin(self.losses)
        return d


def _thin(values: list[float], keep: int = 200) -> list[float]:
    """At most `keep` evenly spaced values (the loss curve for the manifest, not every step)."""
    if len(values) <= keep:
        return [round(v, 5) for v in values]
    stride = len(values) / keep
    return [round(values[int(i * stride)], 5) for i in range(keep)]


def trainable_parameters(model, train_embeddings: bool) -> list[torch.nn.Parameter]:
    """Every parameter but the embedding and output head (tied or not) unless `train_embeddings`."""
    frozen: set[int] = set()
    if not train_embeddings:
        for module in (model.get_input_embeddings(), model.get_output_embeddings()):
            if module is not None:
                frozen.update(id(p) for p in module.parameters())
    params = []
    for p in model.parameters():
        trainable = id(p) not in frozen
        p.requires_grad_(trainable)
        if trainable:
            params.append(p)
    return params


def _session_energy(run: RunDir | None, session: str) -> tuple[float, int]:
    """Energy earlier sessions of this run spent (their last recorded running total each, so steps lost to a
    kill still count), and how many earlier sessions there were."""
    if run is None:
        return 0.0, 0
    spent: dict[str, float] = {}
    for line in run.energy_lines():
        sid = line.get("session")
        if sid and sid != session:
            spent[sid] = max(spent.get(sid, 0.0), float(line.get("session_j", 0.0)))
    return sum(spent.values()), len(spent)


class _Plan:
    """How many optimizer steps the budget allows: fixed by --steps/--tokens; for --minutes estimated from a
    probe before the first step, then re-planned once from the measured steps when the forecast is made."""

    def __init__(self, settings: TrainSettings):
        self.kind, self.value = settings.budget()
        self.settings = settings
        self.total_steps = 0
        self.replanned = False
        self.info: dict = {"budget": {self.kind: self.value}}

    @property
    def budget_s(self) -> float | None:
        return self.value * 60.0 if self.kind == "minutes" else None

    def fixed(self) -> int | None:
        if self.kind == "steps":
            return int(self.value)
        if self.kind == "tokens":
            return max(1, math.ceil(self.value / self.settings.tokens_per_step))
        return None


def _teacher_cache(
    teacher, windows, settings: TrainSettings, plan: _Plan, session_start: float, amp, progress, announce
):
    """The teacher's top-k for every window, computed once, when it pays: not for less than one epoch of
    steps, not beyond CACHE_MAX_BYTES, and not when its pass would take more than CACHE_MAX_BUDGET_SHARE of
    a wall-clock budget. Returns (cache or None, how the teacher runs)."""
    num_windows, seq_len = int(windows.shape[0]), int(windows.shape[1])
    size = cache_bytes(num_windows, seq_len, settings.teacher_topk)
    on_the_fly = "on the fly, full vocabulary"
    if size > CACHE_MAX_BYTES:
        reason = f"its top-{settings.teacher_topk} cache would take {size / 2**30:.1f} GiB"
    elif plan.fixed() is not None and plan.fixed() * settings.grad_accum <= batches_per_epoch(
        num_windows, settings.batch_size
    ):
        reason = "the budget is at most one epoch, so a cache would not be reused"
    else:
        reason = None

        def keep_going(done: int, total: int, elapsed_s: float) -> bool:
            if plan.budget_s is None:
                return True
            projected_s = (time.perf_counter() - session_start) + elapsed_s * (total - done) / done
            return projected_s <= CACHE_MAX_BUDGET_SHARE * plan.budget_s

        topk = teacher_topk_cache(
            teacher,
            windows,
            settings.teacher_topk,
            settings.temperature,
            batch_size=settings.batch_size,
            autocast=amp,
            progress=relabel(progress, "caching teacher top-k"),
            keep_going=keep_going,
        )
        if topk is not None:
            return topk, ""
        reason = (
            f"its one pass over the text would take more than {CACHE_MAX_BUDGET_SHARE:.0%} of the "
            f"{plan.value:g}-minute budget here"
        )
    mode = f"{on_the_fly} ({reason})"
    announce(f"teacher: {mode}")
    return None, mode


@dataclass
class TrainJob:
    """How one training run is metered, checkpointed and reported: what `train` takes besides the models, the
    data and the settings."""

    meter: Meter  # open; the caller closes it after train returns
    carbon: CarbonRate  # the grid intensity and PUE the energy is converted at
    run: RunDir | None = None  # checkpoints and the energy log go here
    resume: bool = False  # continue from the newest checkpoint in `run`
    checkpoint_every_s: float | None = 300.0
    checkpoint_steps: int | None = None
    progress: Progress = no_progress  # one event per phase change, optimizer step and checkpoint
    announce: Callable[[str], None] = noop
    # greenlm.defer.gate.RunGate: consulted after every step; it may checkpoint and pause the run until a
    # cleaner slot of the grid (a wall-clock budget counts the training, not the pauses)
    gate: object = None


def train(teacher, student, data: TrainingData, settings: TrainSettings, job: TrainJob) -> TrainOutcome:
    """Distill `teacher` into `student` (in place) on `data` within `settings`' budget.

    With `job.run`, checkpoints go to that directory; with `job.resume`, training continues from its newest one.
    """
    session = _Session(teacher, student, data, settings, job)
    try:
        session.prepare_data()
        session.start_or_resume()
        session.run_steps()
    finally:
        session.log({"kind": "end"})
    return session.outcome()


class _Session:
    """One session of a training run (a resumed run has several): the models, optimizer, plan and energy
    windows, and the phases `train` runs in order."""

    def __init__(self, teacher, student, data: TrainingData, settings: TrainSettings, job: TrainJob) -> None:
        settings.validate()
        if job.resume and job.run is None:
            raise ValueError("resume needs the run directory to resume from")
        self.teacher, self.student, self.data, self.settings, self.job = teacher, student, data, settings, job
        self.device = next(student.parameters()).device
        self.precision, self.precision_note = resolve_precision(settings.precision, self.device)
        self.id = uuid.uuid4().hex[:8]
        self.start_s = time.perf_counter()
        self.notes: list[str] = []
        self.prior_j, self.prior_sessions = _session_energy(job.run, self.id) if job.resume else (0.0, 0)
        self.energy = TrainingEnergy(job.meter, forecast_after=settings.forecast_after, prior_j=self.prior_j)
        teacher.eval()
        student.train()
        self.params = trainable_parameters(student, settings.train_embeddings)
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.optimizer = torch.optim.AdamW(self.params, lr=settings.lr, weight_decay=settings.weight_decay)
        self.plan = _Plan(settings)
        # set by the phases
        self.windows = data.windows
        self.num_windows = int(data.windows.shape[0])
        self.topk: TeacherTopK | None = None
        self.data_info: dict = {}
        self.step = 0
        self.losses: list[float] = []
        self.training_before_s = 0.0  # earlier sessions' training time
        self.deadline: float | None = None  # perf_counter time a wall-clock budget runs out
        self.last_checkpoint_s = self.start_s
        self.stopped_by = "budget"

    def amp(self):
        return autocast(self.precision, self.device)

    def log(self, line: dict) -> None:
        """One line of the run's energy log (with the session's running total, so a killed session counts)."""
        if self.job.run is not None:
            self.job.run.append_energy(
                {"session": self.id, **line, "session_j": self.energy.session().total_j}
            )

    # --- data: the text windows, plus what the teacher writes and its cached top-k ------------------------------

    def prepare_data(self) -> None:
        generated = self._windows()
        teacher_mode = "on the fly, full vocabulary"
        s, run = self.settings, self.job.run
        if s.teacher_topk and self.topk is None and not self.job.resume:
            self.topk, teacher_mode = _teacher_cache(
                self.teacher, self.windows, s, self.plan, self.start_s, self.amp, self.job.progress,
                self.job.announce,
            )  # fmt: skip
            if self.topk is not None and run is not None:
                run.save_tensors(TOPK_FILE, {"ids": self.topk.ids, "logp": self.topk.logp})
        if self.topk is not None:
            teacher_mode = f"cached top-{s.teacher_topk} (+ rest bucket)"
        self.num_windows = int(self.windows.shape[0])
        self.data_info = self.data.describe() | {
            "teacher_generated_windows": generated,
            "teacher_generated_tokens": generated * self.data.seq_len,
            "windows": self.num_windows,
            "batches_per_epoch": batches_per_epoch(self.num_windows, s.batch_size),
            "teacher": teacher_mode,
        }

    def _windows(self) -> int:
        """The training windows (the text's, plus any the teacher writes; a resumed run reloads both, and its
        top-k cache); returns how many the teacher wrote."""
        s, data, run = self.settings, self.data, self.job.run
        if self.job.resume:
            self.windows = run.load_tensors(DATA_FILE)["windows"]
            cached = run.load_tensors(TOPK_FILE) if s.teacher_topk else None
            if cached is not None:
                self.topk = TeacherTopK(ids=cached["ids"], logp=cached["logp"])
            return int(self.windows.shape[0]) - data.text_windows
        generated = data.generated_windows
        if s.teacher_generate:
            extra = teacher_generate(
                self.teacher,
                data.windows,
                s.teacher_generate,
                seed=s.seed,
                autocast=self.amp,
                progress=relabel(self.job.progress, "teacher writing text"),
            )
            self.windows = torch.cat([data.windows, extra])
            generated = int(extra.shape[0])
        if run is not None:
            run.save_tensors(DATA_FILE, {"windows": self.windows})
        return generated

    # --- where the run stands: fresh, or from its newest checkpoint ---------------------------------------------

    def start_or_resume(self) -> None:
        if self.job.resume:
            self._restore()
        elif self.plan.fixed() is not None:
            self.plan.total_steps = self.plan.fixed()
        else:
            self._probe_plan()
        self.energy.total_steps = self.plan.total_steps
        if self.plan.budget_s is not None:
            self.deadline = self.start_s + self.plan.budget_s - self.training_before_s
        self.last_checkpoint_s = time.perf_counter()

    def _restore(self) -> None:
        run, plan = self.job.run, self.plan
        state = run.load_checkpoint(self.student, self.optimizer)
        self.step = int(state["step"])
        self.losses = list(state["losses"])
        self.training_before_s = float(state["training_s"])
        plan.total_steps = int(state["total_steps"])
        plan.replanned = bool(state["replanned"])
        plan.info = state["plan"]
        self.energy.steps = [StepEnergy(**s) for s in state["steps_energy"]]
        if state.get("first_forecast"):
            self.energy.first_forecast = Forecast.from_dict(state["first_forecast"])
        self.notes.append(
            f"resumed at step {self.step} of {plan.total_steps} from {run.latest().name} "
            f"({self.prior_sessions} earlier session(s), {self.prior_j:.0f} J spent before, lost steps included)"
        )
        self.job.announce(self.notes[-1])

    def _probe_plan(self) -> None:
        """A wall-clock budget: time one micro-batch (after one that warms the allocator) to plan the steps."""
        self.job.progress(ProgressEvent("timing a step", 0, 1))
        self.micro_step(0)
        t0 = time.perf_counter()
        self.micro_step(1 % max(1, batches_per_epoch(self.num_windows, self.settings.batch_size)))
        probe_s = (time.perf_counter() - t0) * self.settings.grad_accum
        self.optimizer.zero_grad(set_to_none=True)
        left_s = self.plan.budget_s - (time.perf_counter() - self.start_s)
        self.plan.total_steps = max(1, steps_within(left_s, probe_s))
        self.plan.info.update(probe_step_s=probe_s, first_plan_steps=self.plan.total_steps)

    # --- the optimizer steps --------------------------------------------------------------------------------------

    def run_steps(self) -> None:
        while self.step < self.plan.total_steps:
            if self._out_of_time():
                self.stopped_by = "time limit"
                break
            loss, lr = self._optimizer_step()
            replanned = self._replan_if_due()
            self._report(loss, lr, replanned)
            due = self._checkpoint_due()
            self._gate()
            if due and self.step < self.plan.total_steps:
                self.checkpoint()
        if self.stopped_by == "time limit":
            self.notes.append(
                f"stopped at the time limit after {self.step} of {self.plan.total_steps} planned steps "
                "(the learning rate had not fully decayed)"
            )

    def _gate(self) -> None:
        """Let the deferral gate pause the run (after a checkpoint) until its next planned slot."""
        gate = self.job.gate
        if gate is None:
            return
        last = self.energy.steps[-1]
        paused_s = gate.between_steps(
            step=self.step, total_steps=self.plan.total_steps, step_s=last.duration_s, step_j=last.energy_j,
            checkpoint=self.checkpoint,
        )  # fmt: skip
        if self.deadline is not None:
            self.deadline += paused_s

    def _out_of_time(self) -> bool:
        """Whether a typical step would end past a wall-clock budget's deadline."""
        if self.deadline is None or not self.energy.steps:
            return False
        typical = quantile([x.duration_s for x in self.energy.steps[-20:]], 0.5)
        return time.perf_counter() + typical > self.deadline

    def micro_step(self, index: int) -> float:
        """Forward and backward of global micro-batch `index`; returns its loss."""
        s, topk = self.settings, self.topk
        idx, _epoch = micro_batch_indices(self.num_windows, s.batch_size, index, s.seed)
        batch = self.windows[idx].to(self.device)
        with self.amp():
            if topk is None:
                with torch.no_grad():
                    target = self.teacher(input_ids=batch, use_cache=False).logits
            else:
                target = TeacherTopK(ids=topk.ids[idx].to(self.device), logp=topk.logp[idx].to(self.device))
            logits = self.student(input_ids=batch, use_cache=False).logits
        loss = distill_loss(logits, target, loss=s.loss, beta=s.beta, temperature=s.temperature)
        if s.ce_weight:
            loss = loss + s.ce_weight * next_token_ce(logits, batch)
        (loss / s.grad_accum).backward()
        return float(loss.detach())

    def _optimizer_step(self) -> tuple[float, float]:
        """One optimizer step inside its own meter window; returns its loss and learning rate."""
        s, total = self.settings, self.plan.total_steps
        warmup = warmup_steps_for(total, s.warmup_fraction)
        lr = s.lr * lr_factor(self.step, warmup_steps=warmup, total_steps=total, min_ratio=s.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.energy.begin_step()
        step_loss = 0.0
        for a in range(s.grad_accum):
            step_loss += self.micro_step(self.step * s.grad_accum + a) / s.grad_accum
        if s.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.params, s.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        record = self.energy.end_step(self.step + 1, tokens=s.tokens_per_step)
        self.step += 1
        self.losses.append(step_loss)
        self.log({"kind": "step", **record.to_dict()})
        return step_loss, lr

    def _replan_if_due(self) -> bool:
        """Re-plan a wall-clock budget once, from the steps measured so far (the probe saw one micro-batch on
        a cold start), when the forecast is due; whether it re-planned now."""
        plan = self.plan
        if (
            plan.kind != "minutes"
            or plan.replanned
            or not self.energy.forecast_due()
            or self.deadline is None
        ):
            return False
        typical = quantile([x.duration_s for x in self.energy.steps], 0.5)
        plan.total_steps = max(
            self.step, self.step + steps_within(self.deadline - time.perf_counter(), typical)
        )
        plan.replanned = True
        plan.info.update(replanned_at_step=self.step, replanned_steps=plan.total_steps, step_s=typical)
        self.energy.total_steps = plan.total_steps
        return True

    def _report(self, loss: float, lr: float, replanned: bool) -> None:
        # the forecast of a wall-clock budget is made with its re-plan, at the warm-up fraction of the budget
        forecast = self.energy.update_forecast(self.step, force=replanned)
        energy_j = self.energy.energy_so_far_j()
        carbon = self.job.carbon
        self.job.progress(
            ProgressEvent(
                "training",
                self.step,
                self.plan.total_steps,
                "steps",
                {
                    "loss": loss,
                    "lr": lr,
                    "tokens": self.step * self.settings.tokens_per_step,
                    "energy_j": energy_j,
                    "carbon_g": carbon.carbon_g(energy_j),
                    "forecast": forecast.to_dict() if forecast else None,
                    "forecast_carbon_g": carbon.carbon_g(forecast.total_j) if forecast else None,
                    "eta_s": forecast.eta_s if forecast else None,
                },
            )
        )

    def _checkpoint_due(self) -> bool:
        every_steps, every_s = self.job.checkpoint_steps, self.job.checkpoint_every_s
        if every_steps and self.step % every_steps == 0:
            return True
        return every_s is not None and time.perf_counter() - self.last_checkpoint_s >= every_s

    def checkpoint(self) -> None:
        run = self.job.run
        if run is None:
            return
        self.job.progress(ProgressEvent("checkpoint", self.step, self.plan.total_steps, "steps"))
        first = self.energy.first_forecast
        state = {
            "step": self.step,
            "total_steps": self.plan.total_steps,
            "replanned": self.plan.replanned,
            "plan": self.plan.info,
            "losses": self.losses,
            "training_s": self._training_s(),
            "steps_energy": [x.to_dict() for x in self.energy.steps],
            "first_forecast": first.to_dict() if first else None,
        }
        run.save_checkpoint(self.step, self.student, self.optimizer, state)
        self.last_checkpoint_s = time.perf_counter()
        self.log({"kind": "checkpoint", "step": self.step})

    # --- what the run did and cost ---------------------------------------------------------------------------------

    def _training_s(self) -> float:
        return self.training_before_s + time.perf_counter() - self.start_s

    def _energy_record(self) -> dict:
        session_m = self.energy.session()
        total_j = self.prior_j + session_m.total_j
        first = self.energy.first_forecast
        tokens = self.step * self.settings.tokens_per_step
        carbon = self.job.carbon
        return {
            "meter": session_m.meter,
            "energy_source": session_m.energy_source,
            "meter_note": self.job.meter.selection_note,
            "energy_j": total_j,
            "energy_kwh": energy_kwh(total_j),
            "carbon_g": carbon.carbon_g(total_j),
            **carbon.to_dict(),  # intensity_g_per_kwh, intensity_source, pue
            "energy_by_domain_j": dict(session_m.energy_j) if not self.prior_j else None,
            "earlier_sessions_j": self.prior_j,
            **self.energy.step_summary(),
            "j_per_training_token_all": total_j / tokens if tokens else None,
            "forecast": first.to_dict() if first else None,
            "forecast_carbon_g": carbon.carbon_g(first.total_j) if first else None,
            "forecast_error_pct": forecast_error_pct(first.total_j, total_j) if first else None,
            "forecast_inside_range": (first.total_low_j <= total_j <= first.total_high_j) if first else None,
            "scope": ENERGY_SCOPE,
        }

    def outcome(self) -> TrainOutcome:
        s, step, losses = self.settings, self.step, self.losses
        energy = self._energy_record()
        return TrainOutcome(
            steps=step,
            planned_steps=self.plan.total_steps,
            stopped_by=self.stopped_by,
            tokens=step * s.tokens_per_step,
            epochs=step * s.grad_accum / max(1, batches_per_epoch(self.num_windows, s.batch_size)),
            training_s=self._training_s(),
            precision=self.precision,
            precision_note=self.precision_note,
            loss_first=losses[0] if losses else None,
            loss_last=losses[-1] if losses else None,
            losses=losses,
            plan=self.plan.info | {"total_steps": self.plan.total_steps},
            energy=energy,
            data=self.data_info,
            sessions=self.prior_sessions + 1,
            notes=self.notes,
        )
