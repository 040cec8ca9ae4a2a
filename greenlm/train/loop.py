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
from greenlm.energy.carbon import GridIntensity, carbon_g, energy_kwh
from greenlm.io import phase_progress
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
from greenlm.train.energy import EnergyLedger, StepEnergy
from greenlm.train.forecast import Forecast, forecast_error_pct, quantile, steps_within
from greenlm.train.losses import TeacherTopK, distill_loss, next_token_ce
from greenlm.train.precision import autocast, resolve_precision
from greenlm.train.schedule import lr_factor, warmup_steps_for
from greenlm.train.settings import TrainSettings

Progress = Callable[[dict], None]
ENERGY_SCOPE = (
    "the training run: data preparation (teacher generation, top-k cache), the step-time probe, every "
    "optimizer step and checkpoint; not model loading, quality evaluation or saving the variant"
)


def _noop(*_args) -> None:
    pass


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
            progress=phase_progress(progress, "caching teacher top-k"),
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


def train(
    teacher,
    student,
    data: TrainingData,
    settings: TrainSettings,
    *,
    meter: Meter,
    intensity: GridIntensity,
    pue: float = 1.0,
    run: RunDir | None = None,
    resume: bool = False,
    checkpoint_every_s: float | None = 300.0,
    checkpoint_steps: int | None = None,
    progress: Progress | None = None,
    announce: Callable[[str], None] | None = None,
    gate=None,
) -> TrainOutcome:
    """Distill `teacher` into `student` (in place) on `data` within `settings`' budget.

    With `run`, checkpoints go to that directory; with `resume`, training continues from its newest one.
    `gate` (greenlm.defer.gate.RunGate): consulted after every step; it may checkpoint and pause the run until
    a cleaner slot of the grid (a wall-clock budget counts the training, not the pauses).
    """
    progress = progress or _noop
    announce = announce or _noop
    settings.validate()
    device = next(student.parameters()).device
    precision, precision_note = resolve_precision(settings.precision, device)
    amp = lambda: autocast(precision, device)  # noqa: E731
    session = uuid.uuid4().hex[:8]
    session_start = time.perf_counter()
    notes: list[str] = []
    prior_j, prior_sessions = _session_energy(run, session) if resume else (0.0, 0)
    ledger = EnergyLedger(meter, forecast_after=settings.forecast_after, prior_j=prior_j)

    def log(line: dict) -> None:
        if run is not None:
            run.append_energy({"session": session, **line, "session_j": ledger.session().total_j})

    teacher.eval()
    student.train()
    params = trainable_parameters(student, settings.train_embeddings)
    for p in teacher.parameters():
        p.requires_grad_(False)
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    plan = _Plan(settings)

    try:
        # --- data: the text windows, plus what the teacher writes and its cached top-k ------------------------
        windows = data.windows
        topk: TeacherTopK | None = None
        generated = data.generated_windows
        if resume:
            assert run is not None
            windows = run.load_tensors(DATA_FILE)["windows"]
            generated = int(windows.shape[0]) - data.text_windows
            cached = run.load_tensors(TOPK_FILE) if settings.teacher_topk else None
            if cached is not None:
                topk = TeacherTopK(ids=cached["ids"], logp=cached["logp"])
        else:
            if settings.teacher_generate:
                extra = teacher_generate(
                    teacher,
                    data.windows,
                    settings.teacher_generate,
                    seed=settings.seed,
                    autocast=amp,
                    progress=phase_progress(progress, "teacher writing text"),
                )
                windows = torch.cat([data.windows, extra])
                generated = int(extra.shape[0])
            if run is not None:
                run.save_tensors(DATA_FILE, {"windows": windows})
        teacher_mode = "on the fly, full vocabulary"
        if settings.teacher_topk and topk is None and not resume:
            topk, teacher_mode = _teacher_cache(
                teacher, windows, settings, plan, session_start, amp, progress, announce
            )
            if topk is not None and run is not None:
                run.save_tensors(TOPK_FILE, {"ids": topk.ids, "logp": topk.logp})
        if topk is not None:
            teacher_mode = f"cached top-{settings.teacher_topk} (+ rest bucket)"
        num_windows = int(windows.shape[0])
        data_info = data.describe() | {
            "teacher_generated_windows": generated,
            "teacher_generated_tokens": generated * data.seq_len,
            "windows": num_windows,
            "batches_per_epoch": batches_per_epoch(num_windows, settings.batch_size),
            "teacher": teacher_mode,
        }

        def micro_step(index: int) -> float:
            """Forward and backward of global micro-batch `index`; returns its loss."""
            idx, _epoch = micro_batch_indices(num_windows, settings.batch_size, index, settings.seed)
            batch = windows[idx].to(device)
            with amp():
                if topk is None:
                    with torch.no_grad():
                        target = teacher(input_ids=batch, use_cache=False).logits
                else:
                    target = TeacherTopK(ids=topk.ids[idx].to(device), logp=topk.logp[idx].to(device))
                logits = student(input_ids=batch, use_cache=False).logits
            loss = distill_loss(
                logits, target, loss=settings.loss, beta=settings.beta, temperature=settings.temperature
            )
            if settings.ce_weight:
                loss = loss + settings.ce_weight * next_token_ce(logits, batch)
            (loss / settings.grad_accum).backward()
            return float(loss.detach())

        # --- where the run stands: fresh, or from its newest checkpoint ---------------------------------------
        start_step, losses, training_before_s = 0, [], 0.0
        if resume:
            assert run is not None
            state = run.load_checkpoint(student, optimizer)
            start_step = int(state["step"])
            losses = list(state["losses"])
            training_before_s = float(state["training_s"])
            plan.total_steps = int(state["total_steps"])
            plan.replanned = bool(state["replanned"])
            plan.info = state["plan"]
            ledger.steps = [StepEnergy(**s) for s in state["steps_energy"]]
            if state.get("first_forecast"):
                ledger.first_forecast = Forecast.from_dict(state["first_forecast"])
            notes.append(
                f"resumed at step {start_step} of {plan.total_steps} from {run.latest().name} "
                f"({prior_sessions} earlier session(s), {prior_j:.0f} J spent before, lost steps included)"
            )
            announce(notes[-1])
        elif plan.fixed() is not None:
            plan.total_steps = plan.fixed()
        else:
            # A wall-clock budget: time one micro-batch (after one that warms the allocator) to plan the steps.
            progress({"phase": "timing a step", "done": 0, "total": 1})
            micro_step(0)
            t0 = time.perf_counter()
            micro_step(1 % max(1, batches_per_epoch(num_windows, settings.batch_size)))
            probe_s = (time.perf_counter() - t0) * settings.grad_accum
            optimizer.zero_grad(set_to_none=True)
            left_s = plan.budget_s - (time.perf_counter() - session_start)
            plan.total_steps = max(1, steps_within(left_s, probe_s))
            plan.info.update(probe_step_s=probe_s, first_plan_steps=plan.total_steps)
        ledger.total_steps = plan.total_steps
        deadline = None if plan.budget_s is None else session_start + plan.budget_s - training_before_s
        last_checkpoint = time.perf_counter()
        tokens_per_step = settings.tokens_per_step
        stopped_by = "budget"

        def checkpoint(step: int) -> None:
            nonlocal last_checkpoint
            if run is None:
                return
            progress({"phase": "checkpoint", "step": step, "total_steps": plan.total_steps})
            run.save_checkpoint(
                step,
                student,
                optimizer,
                {
                    "step": step,
                    "total_steps": plan.total_steps,
                    "replanned": plan.replanned,
                    "plan": plan.info,
                    "losses": losses,
                    "training_s": training_before_s + time.perf_counter() - session_start,
                    "steps_energy": [s.to_dict() for s in ledger.steps],
                    "first_forecast": ledger.first_forecast.to_dict() if ledger.first_forecast else None,
                },
            )
            last_checkpoint = time.perf_counter()
            log({"kind": "checkpoint", "step": step})

        # --- the optimizer steps ------------------------------------------------------------------------------
        step = start_step
        while step < plan.total_steps:
            if deadline is not None and ledger.steps:
                typical = quantile([s.duration_s for s in ledger.steps[-20:]], 0.5)
                if time.perf_counter() + typical > deadline:
                    stopped_by = "time limit"
                    break
            warmup = warmup_steps_for(plan.total_steps, settings.warmup_fraction)
            lr = settings.lr * lr_factor(
                step, warmup_steps=warmup, total_steps=plan.total_steps, min_ratio=settings.min_lr_ratio
            )
            for group in optimizer.param_groups:
                group["lr"] = lr
            ledger.begin_step()
            step_loss = 0.0
            for a in range(settings.grad_accum):
                step_loss += micro_step(step * settings.grad_accum + a) / settings.grad_accum
            if settings.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            record = ledger.end_step(step + 1, tokens=tokens_per_step)
            step += 1
            losses.append(step_loss)
            log({"kind": "step", **record.to_dict()})
            replanned_now = False
            if (
                plan.kind == "minutes"
                and not plan.replanned
                and ledger.forecast_due()
                and deadline is not None
            ):
                # Re-plan from the steps measured so far: the probe saw one micro-batch on a cold start.
                typical = quantile([s.duration_s for s in ledger.steps], 0.5)
                plan.total_steps = max(step, step + steps_within(deadline - time.perf_counter(), typical))
                plan.replanned = True
                plan.info.update(replanned_at_step=step, replanned_steps=plan.total_steps, step_s=typical)
                ledger.total_steps = plan.total_steps
                replanned_now = True
            # the forecast of a wall-clock budget is made with its re-plan, at the warm-up fraction of the budget
            forecast = ledger.update_forecast(step, force=replanned_now)
            energy_j = ledger.energy_so_far_j()
            progress(
                {
                    "phase": "training",
                    "step": step,
                    "total_steps": plan.total_steps,
                    "loss": step_loss,
                    "lr": lr,
                    "tokens": step * tokens_per_step,
                    "energy_j": energy_j,
                    "carbon_g": carbon_g(energy_j, intensity.intensity_g_per_kwh, pue),
                    "forecast": forecast.to_dict() if forecast else None,
                    "forecast_carbon_g": carbon_g(forecast.total_j, intensity.intensity_g_per_kwh, pue)
                    if forecast
                    else None,
                    "eta_s": forecast.eta_s if forecast else None,
                }
            )
            due = (checkpoint_steps and step % checkpoint_steps == 0) or (
                checkpoint_every_s is not None and time.perf_counter() - last_checkpoint >= checkpoint_every_s
            )
            if gate is not None:
                paused_s = gate.between_steps(
                    step=step,
                    total_steps=plan.total_steps,
                    step_s=record.duration_s,
                    step_j=record.energy_j,
                    checkpoint=lambda: checkpoint(step),  # noqa: B023 (called now, inside this iteration)
                )
                if deadline is not None:
                    deadline += paused_s
            if due and step < plan.total_steps:
                checkpoint(step)
        if stopped_by == "time limit":
            notes.append(
                f"stopped at the time limit after {step} of {plan.total_steps} planned steps "
                "(the learning rate had not fully decayed)"
            )
    finally:
        log({"kind": "end"})

    session_m = ledger.session()
    total_j = prior_j + session_m.total_j
    first = ledger.first_forecast
    step_stats = ledger.step_summary()
    energy = {
        "meter": session_m.meter,
        "energy_source": session_m.energy_source,
        "meter_note": meter.selection_note,
        "energy_j": total_j,
        "energy_kwh": energy_kwh(total_j),
        "carbon_g": carbon_g(total_j, intensity.intensity_g_per_kwh, pue),
        "intensity_g_per_kwh": intensity.intensity_g_per_kwh,
        "intensity_source": intensity.source,
        "pue": pue,
        "energy_by_domain_j": dict(session_m.energy_j) if not prior_j else None,
        "earlier_sessions_j": prior_j,
        **step_stats,
        "j_per_training_token_all": total_j / (step * tokens_per_step) if step else None,
        "forecast": first.to_dict() if first else None,
        "forecast_carbon_g": carbon_g(first.total_j, intensity.intensity_g_per_kwh, pue) if first else None,
        "forecast_error_pct": forecast_error_pct(first.total_j, total_j) if first else None,
        "forecast_inside_range": (first.total_low_j <= total_j <= first.total_high_j) if first else None,
        "scope": ENERGY_SCOPE,
    }
    return TrainOutcome(
        steps=step,
        planned_steps=plan.total_steps,
        stopped_by=stopped_by,
        tokens=step * tokens_per_step,
        epochs=step * settings.grad_accum / max(1, batches_per_epoch(num_windows, settings.batch_size)),
        training_s=training_before_s + time.perf_counter() - session_start,
        precision=precision,
        precision_note=precision_note,
        loss_first=losses[0] if losses else None,
        loss_last=losses[-1] if losses else None,
        losses=losses,
        plan=plan.info | {"total_steps": plan.total_steps},
        energy=energy,
        data=data_info,
        sessions=prior_sessions + 1,
        notes=notes,
    )
