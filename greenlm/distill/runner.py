"""`greenlm distill`: heal a cut model by learning its teacher's next-token distribution, and save the result
as a variant directory whose manifest records the teacher, data, loss, steps, tokens and training energy.

The student is a variant directory (e.g. from `greenlm compress --method drop_layers`) or a recipe applied to
a copy of the teacher here. Training reads only the calibration split; quality before and after is measured
against the teacher on the evaluation split.
"""

from __future__ import annotations

import copy
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from greenlm.compress.base import CompressContext, StepReport, parameter_count
from greenlm.compress.distill import Distill, check_trainable
from greenlm.compress.methods import apply_step
from greenlm.compress.pipeline import architecture
from greenlm.compress.recipe import Recipe, as_recipe
from greenlm.data.sources import load_text
from greenlm.data.split import TextSplit, split_text
from greenlm.defer.gate import RunGate
from greenlm.defer.grid import open_grid
from greenlm.distill.config import DistillConfig
from greenlm.energy.carbon import CarbonRate
from greenlm.engines.transformers_engine import TransformersEngine, resolve_device, set_threads
from greenlm.errors import GreenlmError
from greenlm.evaluate.compare import compare_to_reference
from greenlm.evaluate.config import DEFAULT_MAX_EVAL_TOKENS, DEFAULT_WINDOW_TOKENS
from greenlm.evaluate.reference import reference_stats
from greenlm.io import atomic_directory, noop, refuse_existing, said_once
from greenlm.models.loader import LoadedModel, load_model
from greenlm.models.manifest import Manifest, dir_size_bytes, is_variant_dir, read_manifest
from greenlm.models.spec import ModelSpec, resolve_model
from greenlm.models.variant import save_variant_files
from greenlm.progress import Progress, ProgressEvent, relabel
from greenlm.train.checkpoint import RunDir
from greenlm.train.data import TrainingData, check_one_batch, text_windows
from greenlm.train.energy import training_summary
from greenlm.train.loop import TrainJob, TrainOutcome, train

PROBE_TEXT = (
    "def payback(training_j, saving_j_per_token):\n    return training_j / saving_j_per_token  # tokens"
)


@dataclass
class DistillResult:
    variant_dir: str
    manifest: Manifest
    quality_before: dict | None
    quality_after: dict | None
    training: dict
    size_bytes: int
    wall_s: float
    checkpoint_dir: str | None  # kept (--keep-checkpoint) or None when removed
    notes: list[str] = field(default_factory=list)
    run_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        energy = self.training["energy"]
        return {
            "variant_dir": self.variant_dir,
            "variant_id": self.manifest.variant_id,
            "teacher": self.manifest.parent,
            "student": self.manifest.training["student"],
            "recipe": self.manifest.recipe,
            "execution": self.manifest.execution,
            "quality_before": self.quality_before,
            "quality_after": self.quality_after,
            "steps": self.training["steps"],
            "planned_steps": self.training["planned_steps"],
            "stopped_by": self.training["stopped_by"],
            "tokens": self.training["tokens"],
            "epochs": self.training["epochs"],
            "training_s": self.training["training_s"],
            "loss": self.manifest.training["loss"],
            "loss_first": self.training["loss_first"],
            "loss_last": self.training["loss_last"],
            "precision": self.training["precision"],
            "energy_j": energy["energy_j"],
            "carbon_g": energy["carbon_g"],
            "meter": energy["meter"],
            "energy_source": energy["energy_source"],
            "j_per_step_median": energy.get("j_per_step_median"),
            "j_per_training_token": energy.get("j_per_training_token"),
            "forecast_total_j": (energy.get("forecast") or {}).get("total_j"),
            "forecast_error_pct": energy.get("forecast_error_pct"),
            "energy": energy,
            "data": self.training["data"],
            "plan": self.training["plan"],
            "architecture": self.manifest.architecture,
            "size_bytes": self.size_bytes,
            "payback": "measure the teacher and this variant (greenlm measure --model ...), then "
            "`greenlm eval --model DIR` reports the payback in served tokens",
            "checkpoint_dir": self.checkpoint_dir,
            "deferral": self.training.get("deferral"),
            "wall_s": self.wall_s,
            "notes": self.notes,
            "run_id": self.run_id,
        }


def distill_step(config: DistillConfig) -> Distill:
    """The recipe step that records (and, through `greenlm compress`, repeats) this training."""
    return Distill(**config.train.to_dict(), meter=config.energy.meter)


def parse_student_recipe(value) -> Recipe:
    recipe = as_recipe(value)
    if any(s.method == "distill" for s in recipe.steps):
        raise GreenlmError(
            "--student-recipe contains a distill step: give only the cuts (drop_layers, prune_channels, "
            "prune_heads); greenlm distill adds the training"
        )
    return recipe


def check_student(student, student_tokenizer, teacher, teacher_tokenizer, name: str) -> None:
    """Same vocabulary (output width and tokenization), fewer parameters, plain float modules."""
    s_vocab = student.get_output_embeddings().weight.shape[0]
    t_vocab = teacher.get_output_embeddings().weight.shape[0]
    if s_vocab != t_vocab:
        raise GreenlmError(
            f"student {name} has a vocabulary of {s_vocab} tokens but the teacher has {t_vocab}: "
            "distillation matches next-token distributions, so both need the same tokenizer"
        )
    if student_tokenizer is not None:
        s_ids = student_tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]
        t_ids = teacher_tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]
        if list(s_ids) != list(t_ids):
            raise GreenlmError(
                f"student {name} tokenizes text differently from the teacher (same vocabulary size, another "
                "vocabulary): use a student made from the teacher, e.g. greenlm compress --model TEACHER"
            )
    check_trainable(student, name)
    s_params, t_params = parameter_count(student), parameter_count(teacher)
    if s_params >= t_params:
        raise GreenlmError(
            f"student {name} has {s_params:,} parameters, not fewer than the teacher's {t_params:,}: "
            "distill into a cut model (greenlm compress --method drop_layers, prune_channels or prune_heads)"
        )


def _identity(
    config: DistillConfig, teacher: ModelSpec, student: ModelSpec | Recipe, text_fingerprint: str
) -> dict:
    """What makes a run this run: a checkpoint continues only a run with the same identity."""
    return {
        "teacher": teacher.fingerprint(),
        "student": student.fingerprint() if isinstance(student, ModelSpec) else student.to_dict(),
        "text": text_fingerprint,
        "settings": config.train.to_dict(),
    }


def _load(spec: ModelSpec, device: str) -> LoadedModel:
    loaded = load_model(spec, device=device)
    if loaded.load_source == "gguf-dequantize":
        # transformers refuses to save a model loaded from GGUF; the first load wrote the safetensors cache
        loaded = load_model(spec, device=device)
    return loaded


def _quality(
    model, tokenizer, reference, eval_tokens: int, threads: int | None, progress, label: str
) -> dict:
    engine = TransformersEngine(
        LoadedModel(model, tokenizer, ModelSpec("student", "variant", Path(".")), 0.0, "in-memory"),
        threads=threads,
    )
    was_training = model.training
    model.eval()
    try:
        stats = compare_to_reference(
            engine,
            reference,
            max_eval_tokens=eval_tokens,
            progress=relabel(progress, label),
        )
    finally:
        model.train(was_training)
    return {
        "ppl": stats.ppl,
        "ppl_reference": stats.ppl_reference,
        "ppl_increase_pct": stats.ppl_increase_pct,
        "kld": stats.kld,
        "top1_agreement": stats.top1_agreement,
        "tokens_evaluated": stats.tokens_evaluated,
        "text": reference.text,
    }


def _student_from_checkpoint(run: RunDir, device: str):
    """An empty student of the run's architecture: the newest checkpoint fills its weights."""
    student = AutoModelForCausalLM.from_config(
        AutoConfig.from_pretrained(run.student_config_dir()), dtype=torch.float32
    ).to(device)
    if getattr(student.config, "tie_word_embeddings", False):
        student.tie_weights()
    return student, run.info()["student_info"]


def _student_from_directory(spec: ModelSpec, teacher: LoadedModel, teacher_spec: ModelSpec, device: str, say):
    loaded = _load(spec, device)
    check_student(loaded.model, loaded.tokenizer, teacher.model, teacher.tokenizer, spec.name)
    manifest = read_manifest(spec.path).to_dict() if is_variant_dir(spec.path) else None
    if manifest is not None and manifest.get("execution") == "simulated":
        raise GreenlmError(
            f"student {spec.name} is a simulated variant (its effect lives in dense float weights, and "
            "training would undo it): distill a structured cut (drop_layers, prune_channels, prune_heads)"
        )
    if manifest is None:
        say(f"student {spec.name} is not a greenlm variant: its manifest records no recipe")
    elif (manifest.get("parent") or {}).get("fingerprint") not in (None, teacher_spec.fingerprint()):
        say(
            f"note: student {spec.name} was cut from {manifest['parent'].get('name')}, not from the teacher "
            f"{teacher_spec.name}"
        )
    manifest = manifest or {}
    return loaded.model, {
        "source": "variant" if manifest else "directory",
        "identity": spec.identity(),
        "recipe_steps": (manifest.get("recipe") or {}).get("steps", []),
        "step_reports": manifest.get("steps", []),
        "execution": manifest.get("execution", "real"),
        "parent": manifest.get("parent"),
        "quality_at_creation": manifest.get("quality"),
    }


def _student_from_recipe(
    config: DistillConfig, recipe: Recipe, teacher: LoadedModel, teacher_spec: ModelSpec, progress
):
    student = copy.deepcopy(teacher.model)
    ctx = CompressContext(
        tokenizer=teacher.tokenizer,
        text=config.text,
        calibration_samples=config.calibration_samples,
        calibration_tokens=config.calibration_tokens,
        parent=teacher_spec,
    )
    for index, step in enumerate(recipe.steps, 1):
        progress(ProgressEvent(f"student recipe {index}/{len(recipe.steps)}: {step.method}", 0, 1))
        ctx.reports.append(apply_step(student, step, ctx))
    if any(r.execution == "simulated" for r in ctx.reports):
        raise GreenlmError(
            "--student-recipe has a simulated step (its effect lives in dense float weights, and training "
            "would undo it): use structured cuts (drop_layers, prune_channels, prune_heads)"
        )
    check_student(student, None, teacher.model, teacher.tokenizer, f"from recipe {recipe.label}")
    return student, {
        "source": "recipe",
        "recipe_steps": recipe.to_dict()["steps"],
        "step_reports": [r.to_dict() for r in ctx.reports],
        "execution": "real",
        "parent": teacher_spec.identity(),
        "quality_at_creation": None,
    }


def _gate(config: DistillConfig, carbon: CarbonRate, meter, say) -> RunGate | None:
    """With --deadline: the gate that pauses training in the grid's dirty hours (None without)."""
    if config.deadline is None:
        return None
    gate = RunGate(
        open_grid(config.grid_settings(), carbon.grid),
        config.deadline_s,
        pue=carbon.pue,
        meter=meter,
        announce=say,
    )
    say(
        f"deferred training: done by {gate.summary()['deadline']} (grid clock), in the cleanest hours of {config.grid_settings().csv or config.grid_provider}"
    )
    return gate


@dataclass(frozen=True)
class _Checked:
    """What the cheap checks settled, before anything heavy loads."""

    recipe: Recipe | None  # the student recipe, when the student is cut here
    out: Path
    teacher_spec: ModelSpec
    student_spec: ModelSpec | None  # a student directory
    split: TextSplit
    carbon: CarbonRate
    device: str
    identity: dict  # what makes a run this run (a checkpoint continues only the same)
    resumed: RunDir | None  # the interrupted run --resume continues


@dataclass
class _Models:
    teacher: LoadedModel
    data: TrainingData
    student: Any  # a torch module, trained in place
    student_info: dict  # where it came from, for the manifest


def distill(
    config: DistillConfig,
    *,
    store=None,
    progress: Progress | None = None,
    announce: Callable[[str], None] | None = None,
) -> DistillResult:
    """Distill `config.teacher` into the student and save the variant to `config.out`."""
    progress = progress or noop
    start = time.perf_counter()
    notes, say = said_once(announce)
    checked = _check(config)
    meter = config.energy.open_meter()
    gate = _gate(config, checked.carbon, meter, say)  # the deadline counts from the start of the command
    try:
        models = _load_models(config, checked, progress, say)
        reference = _reference(config, checked, models.teacher, progress, say)
        run, quality_before = _open_run(config, checked, models, reference, progress)
        say(meter.selection_note)
        job = TrainJob(
            meter,
            checked.carbon,
            run=run,
            resume=config.resume,
            checkpoint_every_s=config.checkpoint_minutes * 60.0 if config.checkpoint_minutes else None,
            checkpoint_steps=config.checkpoint_steps,
            progress=progress,
            announce=say,
            gate=gate,
        )
        outcome = _train(config, models, job)
    finally:
        if gate is not None:
            gate.close()
        meter.close()  # RAPL's sampling thread, NVML's handle
    models.student.eval()
    for n in outcome.notes:
        say(n)
    say(f"precision: {outcome.precision_note}")
    quality_after = _student_quality(config, models, reference, progress, "quality after")
    training = outcome.to_dict()
    if gate is not None:
        training["deferral"] = gate.summary()
    manifest = _manifest(config, checked, models, training, (quality_before, quality_after), notes)
    progress(ProgressEvent("saving", 0, 1))
    with atomic_directory(checked.out) as tmp:
        manifest = save_variant_files(
            models.student, models.teacher.tokenizer, tmp, Manifest.from_dict(manifest)
        )
    kept = str(run.path) if config.keep_checkpoint else None
    if not config.keep_checkpoint:
        run.remove()
    result = DistillResult(
        variant_dir=str(checked.out),
        manifest=manifest,
        quality_before=quality_before,
        quality_after=quality_after,
        training=training,
        size_bytes=dir_size_bytes(checked.out),
        wall_s=time.perf_counter() - start,
        checkpoint_dir=kept,
        notes=notes,
    )
    if store is not None:
        result.run_id = _store_result(store, result, checked.teacher_spec)
    return result


def _check(config: DistillConfig) -> _Checked:
    """Every cheap check, in order: paths, models, text, carbon, device, the checkpoint directory."""
    recipe = parse_student_recipe(config.student_recipe) if config.student_recipe is not None else None
    out = Path(config.out).expanduser()
    refuse_existing(out)
    teacher_spec = resolve_model(config.teacher)
    student_spec = resolve_model(config.student) if config.student is not None else None
    if student_spec is not None and student_spec.path == teacher_spec.path:
        raise GreenlmError("the student is the teacher itself: give a smaller student (a cut variant)")
    split = split_text(load_text(config.text))
    carbon = config.energy.carbon()
    device = resolve_device(config.device)
    set_threads(config.threads)
    identity = _identity(config, teacher_spec, student_spec or recipe, split.fingerprint)
    resumed = RunDir.open_existing(config.checkpoint_path, identity) if config.resume else None
    if resumed is None:
        RunDir.check_new(config.checkpoint_path)
    return _Checked(recipe, out, teacher_spec, student_spec, split, carbon, device, identity, resumed)


def _load_models(config: DistillConfig, checked: _Checked, progress: Progress, say) -> _Models:
    """The teacher and the training windows, then the student: rebuilt from the checkpoint, loaded, or cut from
    a copy of the teacher."""
    progress(ProgressEvent("loading teacher", 0, 1))
    teacher = _load(checked.teacher_spec, checked.device)
    data = text_windows(teacher.tokenizer, config.text, config.train.seq_len)
    check_one_batch(data, config.train.batch_size, config.train.seq_len)
    progress(ProgressEvent("preparing student", 0, 1))
    if checked.resumed is not None:
        student, info = _student_from_checkpoint(checked.resumed, checked.device)
    elif checked.student_spec is not None:
        student, info = _student_from_directory(
            checked.student_spec, teacher, checked.teacher_spec, checked.device, say
        )
    else:
        student, info = _student_from_recipe(config, checked.recipe, teacher, checked.teacher_spec, progress)
    return _Models(teacher, data, student, info)


def _reference(config: DistillConfig, checked: _Checked, teacher: LoadedModel, progress: Progress, say):
    """The teacher's statistics on the evaluation split, that quality before and after is measured against."""
    if not config.evaluate:
        return None
    return reference_stats(
        checked.teacher_spec,
        checked.split,
        window_tokens=DEFAULT_WINDOW_TOKENS,
        max_eval_tokens=max(DEFAULT_MAX_EVAL_TOKENS, config.eval_tokens),
        loaded_engine=TransformersEngine(teacher, threads=config.threads),
        progress=relabel(progress, "reference (teacher)"),
        announce=say,
    )


def _student_quality(config: DistillConfig, models: _Models, reference, progress, label: str) -> dict | None:
    if reference is None:
        return None
    return _quality(
        models.student,
        models.teacher.tokenizer,
        reference,
        config.eval_tokens,
        config.threads,
        progress,
        label,
    )


def _open_run(
    config: DistillConfig, checked: _Checked, models: _Models, reference, progress
) -> tuple[RunDir, dict | None]:
    """The run directory and the quality before training: a resumed run kept both; a fresh one measures the
    student and creates the directory."""
    if checked.resumed is not None:
        return checked.resumed, checked.resumed.info().get("quality_before")
    quality_before = _student_quality(config, models, reference, progress, "quality before")
    run = RunDir.create(
        config.checkpoint_path,
        checked.identity,
        {
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "teacher": checked.teacher_spec.identity(),
            "student_info": models.student_info,
            "quality_before": quality_before,
            "out": str(checked.out),
        },
    )
    run.save_student_config(models.student)
    return run, quality_before


def _train(config: DistillConfig, models: _Models, job: TrainJob) -> TrainOutcome:
    try:
        return train(models.teacher.model, models.student, models.data, config.train, job)
    except BaseException:
        if job.run.latest() is None:  # nothing to resume from: leave nothing behind
            job.run.remove()
        raise


def _manifest(
    config: DistillConfig,
    checked: _Checked,
    models: _Models,
    training: dict,
    quality: tuple[dict | None, dict | None],
    notes: list[str],
) -> dict:
    """The variant's manifest: the student's recipe plus the distill step, its report, and the training."""
    quality_before, quality_after = quality
    teacher_spec, info, train_settings = checked.teacher_spec, models.student_info, config.train
    distill_report = StepReport(
        "distill",
        "real",
        notes=list(training["notes"]),
        details={
            "teacher": teacher_spec.identity(),
            "training": training,
            "quality_before": quality_before,
            "quality_after": quality_after,
        },
    )
    summary = None
    if quality_after is not None:
        summary = {
            **quality_after,
            "reference": teacher_spec.name,
            "budget": f"{config.eval_tokens} evaluation tokens; `greenlm eval --model {config.out}` for the full evaluation",
        }
    return {
        "variant_id": uuid.uuid4().hex[:12],
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "recipe": {"steps": [*info["recipe_steps"], json.loads(json.dumps(distill_step(config).to_dict()))]},
        "parent": teacher_spec.identity(),
        "execution": info["execution"],
        "steps": [*info["step_reports"], distill_report.to_dict()],
        "architecture": architecture(models.student),
        "calibration": {"text": checked.split.describe("calibration"), "training": training["data"]},
        "quality": summary,
        "training": {
            **training_summary([training]),
            "method": "distill",
            "teacher": teacher_spec.identity(),
            "student": {k: v for k, v in info.items() if k in ("source", "identity", "recipe_steps")},
            "loss": {
                "loss": train_settings.loss,
                "beta": train_settings.beta if train_settings.loss == "jsd" else None,
                "temperature": train_settings.temperature,
                "ce_weight": train_settings.ce_weight,
            },
            "quality_before": quality_before,
            "quality_after": quality_after,
            "deferral": training.get("deferral"),
        },
        "notes": notes,
    }


def _store_result(store, result: DistillResult, teacher_spec: ModelSpec) -> str:
    variant = resolve_model(result.variant_dir)
    manifest, energy = result.manifest, result.training["energy"]
    record = dict(result.to_dict(), model=variant.name, model_identity=variant.identity(), kind="variant")
    record.update(meter=energy["meter"], energy_source=energy["energy_source"])
    return store.add(
        "variant",
        record,
        variant_id=manifest.variant_id,
        parent=teacher_spec.name,
        recipe_json=json.dumps(manifest.recipe),
        execution=manifest.execution,
    )
