"""`compress`: load the parent, apply a recipe's steps in order, measure quality against the parent on held-out
text, and save the variant directory atomically (one store row, kind "variant").

Quality at creation uses the parent's cached reference statistics (the same cache `greenlm eval` reads) and a
reduced budget of `eval_tokens` evaluation tokens, so compressing stays quick; `greenlm eval --model DIR`
gives the full-budget figures later.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from greenlm.compress.base import CompressContext, StepReport
from greenlm.compress.config import CompressConfig
from greenlm.compress.methods import apply_step
from greenlm.compress.recipe import Recipe, as_recipe
from greenlm.data.sources import load_text
from greenlm.data.split import split_text
from greenlm.engines.transformers_engine import TransformersEngine, resolve_device, set_threads
from greenlm.evaluate.compare import compare_to_reference
from greenlm.evaluate.config import DEFAULT_MAX_EVAL_TOKENS, DEFAULT_WINDOW_TOKENS
from greenlm.evaluate.reference import reference_stats
from greenlm.io import atomic_directory, refuse_existing, said_once
from greenlm.models.loader import LoadedModel, load_model
from greenlm.models.manifest import Manifest, dir_size_bytes
from greenlm.models.spec import ModelSpec, resolve_model
from greenlm.models.variant import save_variant_files
from greenlm.progress import Progress, ProgressEvent, no_progress, relabel
from greenlm.train.energy import training_summary


@dataclass
class CompressResult:
    variant_dir: str
    manifest: Manifest
    size_bytes: int
    parent_size_bytes: int | None
    wall_s: float
    notes: list[str] = field(default_factory=list)
    run_id: str | None = None

    @property
    def execution(self) -> str:
        return self.manifest.execution

    def to_dict(self) -> dict[str, Any]:
        quality = self.manifest.quality or {}
        return {
            "variant_dir": self.variant_dir,
            "variant_id": self.manifest.variant_id,
            "parent": self.manifest.parent,
            "recipe": self.manifest.recipe,
            "execution": self.execution,
            "steps": self.manifest.steps,
            "ppl": quality.get("ppl"),
            "ppl_reference": quality.get("ppl_reference"),
            "ppl_increase_pct": quality.get("ppl_increase_pct"),
            "kld": quality.get("kld"),
            "top1_agreement": quality.get("top1_agreement"),
            "tokens_evaluated": quality.get("tokens_evaluated"),
            "quality": self.manifest.quality,
            "size_bytes": self.size_bytes,
            "parent_size_bytes": self.parent_size_bytes,
            "architecture": self.manifest.architecture,
            "wall_s": self.wall_s,
            "notes": self.notes,
            "run_id": self.run_id,
        }


def architecture(model) -> dict[str, Any]:
    c = model.config
    return {
        "model_type": getattr(c, "model_type", None),
        "num_hidden_layers": getattr(c, "num_hidden_layers", None),
        "hidden_size": getattr(c, "hidden_size", None),
        "intermediate_size": getattr(c, "intermediate_size", None),
        "num_attention_heads": getattr(c, "num_attention_heads", None),
        "num_key_value_heads": getattr(c, "num_key_value_heads", None),
        "head_dim": getattr(c, "head_dim", None),
        "params": sum(p.numel() for p in model.parameters()),
    }


def _parent_size(spec) -> int | None:
    if spec.path.is_file():
        return spec.path.stat().st_size
    return dir_size_bytes(spec.path)


def compress(
    config: CompressConfig,
    *,
    store=None,
    progress: Progress | None = None,
    announce: Callable[[str], None] | None = None,
) -> CompressResult:
    """Make the variant `config.recipe` describes from `config.model` and save it to `config.out`."""
    progress = progress or no_progress
    start = time.perf_counter()
    notes, say = said_once(announce)

    # Cheap checks first: a bad --out, model or text fails before anything loads.
    out = Path(config.out).expanduser()
    refuse_existing(out)
    recipe: Recipe = as_recipe(config.recipe)
    parent = resolve_model(config.model)
    split = split_text(load_text(config.text))
    set_threads(config.threads)

    progress(ProgressEvent("loading parent", 0, 1))
    loaded = load_model(parent, device=resolve_device(config.device))
    if loaded.load_source == "gguf-dequantize":
        # transformers refuses to save a model it loaded from GGUF; the first load just wrote the plain
        # safetensors cache, so load that instead
        loaded = load_model(parent, device=resolve_device(config.device))
    progress(ProgressEvent("loading parent", 1, 1))
    model, tokenizer = loaded.model, loaded.tokenizer

    reference = None
    if config.evaluate:
        # The parent's statistics are computed once and cached under the same key `greenlm eval` uses.
        reference = reference_stats(
            parent,
            split,
            window_tokens=DEFAULT_WINDOW_TOKENS,
            max_eval_tokens=max(DEFAULT_MAX_EVAL_TOKENS, config.eval_tokens),
            loaded_engine=TransformersEngine(loaded, threads=config.threads),
            progress=relabel(progress, "reference (parent)"),
            announce=say,
        )

    ctx = CompressContext(
        tokenizer=tokenizer,
        text=config.text,
        calibration_samples=config.calibration_samples,
        calibration_tokens=config.calibration_tokens,
        progress=progress,
        parent=parent,
    )
    reports: list[StepReport] = ctx.reports
    for index, step in enumerate(recipe.steps, 1):
        progress(ProgressEvent(f"step {index}/{len(recipe.steps)}: {step.method}", 0, 1, "steps"))
        report = apply_step(model, step, ctx)
        reports.append(report)
        for n in report.notes:
            say(f"{step.method}: {n}")
        progress(ProgressEvent(f"step {index}/{len(recipe.steps)}: {step.method}", 1, 1, "steps"))
    execution = "real" if all(r.execution == "real" for r in reports) else "simulated"
    if execution == "simulated":
        say(
            "execution: simulated: at least one step only models its quality effect; "
            "do not read this variant's speed or energy as a saving"
        )

    variant_id = uuid.uuid4().hex[:12]
    quality = None
    if reference is not None:
        engine = TransformersEngine(
            LoadedModel(model, tokenizer, ModelSpec(str(config.out), "variant", out), 0.0, "in-memory"),
            threads=config.threads,
        )
        stats = compare_to_reference(
            engine,
            reference,
            max_eval_tokens=config.eval_tokens,
            progress=relabel(progress, "quality vs parent"),
        )
        quality = {
            **stats.to_dict(),
            "reference": parent.name,
            "text": reference.text,
            "budget": f"{stats.windows} windows of {stats.window_tokens} tokens (eval_tokens={config.eval_tokens}); "
            f"`greenlm eval --model {config.out}` for the full evaluation",
        }
    else:
        say("quality not measured at creation (evaluate off): run `greenlm eval --model DIR`")

    trained = [r.details["training"] for r in reports if "training" in r.details]
    manifest = Manifest(
        variant_id=variant_id,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        recipe=recipe.to_dict(),
        parent=parent.identity(),
        execution=execution,
        steps=[r.to_dict() for r in reports],
        architecture=architecture(model),
        calibration={
            "text": split.describe("calibration"),
            "samples": config.calibration_samples,
            "tokens_per_sample": config.calibration_tokens,
        },
        quality=quality,
        notes=notes,
        # training energy (a distill step): what payback and the optimizer read
        training=training_summary(trained) if trained else None,
    )
    progress(ProgressEvent("saving", 0, 1))
    codes = {name: weight for r in reports for name, weight in r.codes.items()}
    with atomic_directory(out) as tmp:
        manifest = save_variant_files(model, tokenizer, tmp, manifest, codes=codes)
    progress(ProgressEvent("saving", 1, 1))

    result = CompressResult(
        variant_dir=str(out),
        manifest=manifest,
        size_bytes=dir_size_bytes(out),
        parent_size_bytes=_parent_size(parent),
        wall_s=time.perf_counter() - start,
        notes=notes,
    )
    if store is not None:
        variant = resolve_model(str(out))
        record = dict(result.to_dict(), model=variant.name, model_identity=variant.identity(), kind="variant")
        result.run_id = store.add(
            "variant",
            record,
            variant_id=variant_id,
            parent=parent.name,
            recipe_json=json.dumps(manifest.recipe),
            execution=execution,
        )
    return result
