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

from greenlm.compress.base import CompressContext, StepConfig, StepReport, apply_step
from greenlm.compress.recipe import Recipe, as_recipe
from greenlm.errors import GreenlmError

DEFAULT_EVAL_TOKENS = 4096  # 8 windows of 512: ~5 s for the built-in model on 2 cores
Progress = Callable[[str, int, int], None]  # (label, done, total)


def _noop(*_args) -> None:
    pass


@dataclass
class CompressConfig:
    recipe: Recipe | StepConfig | list | dict | str  # a Recipe, one step, step dicts, or a YAML path
    out: str  # the variant directory to create; must not exist
    model: str | None = None  # parent: built-in name, HF directory (a variant too) or .gguf
    text: str | None = None  # calibration comes from its calibration split, quality from its evaluation split
    calibration_samples: int = CompressContext.calibration_samples
    calibration_tokens: int = CompressContext.calibration_tokens
    evaluate: bool = True  # measure quality against the parent at creation
    eval_tokens: int = DEFAULT_EVAL_TOKENS
    threads: int | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        self.recipe = as_recipe(self.recipe)
        if not isinstance(self.out, (str, Path)) or not str(self.out).strip():
            raise GreenlmError("--out is required: the directory to write the variant to")
        for flag, value, low in (
            ("--calibration-samples", self.calibration_samples, 1),
            ("--calibration-tokens", self.calibration_tokens, 2),
            ("--eval-tokens", self.eval_tokens, 2),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise GreenlmError(f"{flag} must be a whole number of at least {low}, got {value!r}")
        if self.threads is not None and self.threads < 1:
            raise GreenlmError(f"--threads must be at least 1, got {self.threads}")


@dataclass
class CompressResult:
    variant_dir: str
    manifest: dict[str, Any]
    size_bytes: int
    parent_size_bytes: int | None
    wall_s: float
    notes: list[str] = field(default_factory=list)
    run_id: str | None = None

    @property
    def execution(self) -> str:
        return self.manifest["execution"]

    def to_dict(self) -> dict[str, Any]:
        quality = self.manifest.get("quality") or {}
        return {
            "variant_dir": self.variant_dir,
            "variant_id": self.manifest["variant_id"],
            "parent": self.manifest["parent"],
            "recipe": self.manifest["recipe"],
            "execution": self.execution,
            "steps": self.manifest["steps"],
            "ppl": quality.get("ppl"),
            "ppl_reference": quality.get("ppl_reference"),
            "ppl_increase_pct": quality.get("ppl_increase_pct"),
            "kld": quality.get("kld"),
            "top1_agreement": quality.get("top1_agreement"),
            "tokens_evaluated": quality.get("tokens_evaluated"),
            "quality": self.manifest.get("quality"),
            "size_bytes": self.size_bytes,
            "parent_size_bytes": self.parent_size_bytes,
            "architecture": self.manifest["architecture"],
            "wall_s": self.wall_s,
            "notes": self.notes,
            "run_id": self.run_id,
        }


def _architecture(model) -> dict[str, Any]:
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
    from greenlm.models.variant import dir_size_bytes

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
    from greenlm.data import load_text, split_text
    from greenlm.engines.transformers_engine import TransformersEngine, resolve_device, set_threads
    from greenlm.models import LoadedModel, ModelSpec, load_model, resolve_model
    from greenlm.models.variant import atomic_directory, dir_size_bytes, refuse_existing, save_variant_files

    progress = progress or _noop
    announce = announce or _noop
    start = time.perf_counter()
    notes: list[str] = []

    def say(message: str) -> None:
        if message not in notes:
            notes.append(message)
            announce(message)

    # Cheap checks first: a bad --out, model or text fails before anything loads.
    out = Path(config.out).expanduser()
    refuse_existing(out)
    recipe: Recipe = config.recipe  # type: ignore[assignment]
    parent = resolve_model(config.model)
    split = split_text(load_text(config.text))
    set_threads(config.threads)

    progress("loading parent", 0, 1)
    loaded = load_model(parent, device=resolve_device(config.device))
    if loaded.load_source == "gguf-dequantize":
        # transformers refuses to save a model it loaded from GGUF; the first load just wrote the plain
        # safetensors cache, so load that instead
        loaded = load_model(parent, device=resolve_device(config.device))
    progress("loading parent", 1, 1)
    model, tokenizer = loaded.model, loaded.tokenizer

    reference = None
    if config.evaluate:
        from greenlm.evaluate import DEFAULT_MAX_EVAL_TOKENS, DEFAULT_WINDOW_TOKENS, reference_stats

        # The parent's statistics are computed once and cached under the same key `greenlm eval` uses.
        reference = reference_stats(
            parent,
            split,
            window_tokens=DEFAULT_WINDOW_TOKENS,
            max_eval_tokens=max(DEFAULT_MAX_EVAL_TOKENS, config.eval_tokens),
            loaded_engine=TransformersEngine(loaded, threads=config.threads),
            progress=lambda d, t: progress("reference (parent)", d, t),
            announce=say,
        )

    ctx = CompressContext(
        tokenizer=tokenizer,
        text=config.text,
        calibration_samples=config.calibration_samples,
        calibration_tokens=config.calibration_tokens,
        progress=progress,
    )
    reports: list[StepReport] = []
    for index, step in enumerate(recipe.steps, 1):
        progress(f"step {index}/{len(recipe.steps)}: {step.method}", 0, 1)
        report = apply_step(model, step, ctx)
        reports.append(report)
        for n in report.notes:
            say(f"{step.method}: {n}")
        progress(f"step {index}/{len(recipe.steps)}: {step.method}", 1, 1)
    execution = "real" if all(r.execution == "real" for r in reports) else "simulated"
    if execution == "simulated":
        say(
            "execution: simulated: at least one step only models its quality effect; "
            "do not read this variant's speed or energy as a saving"
        )

    variant_id = uuid.uuid4().hex[:12]
    quality = None
    if reference is not None:
        from greenlm.evaluate import compare_to_reference

        engine = TransformersEngine(
            LoadedModel(model, tokenizer, ModelSpec(str(config.out), "variant", out), 0.0, "in-memory"),
            threads=config.threads,
        )
        stats = compare_to_reference(
            engine,
            reference,
            max_eval_tokens=config.eval_tokens,
            progress=lambda d, t: progress("quality vs parent", d, t),
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

    manifest = {
        "variant_id": variant_id,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "recipe": recipe.to_dict(),
        "parent": parent.identity(),
        "execution": execution,
        "steps": [r.to_dict() for r in reports],
        "architecture": _architecture(model),
        "calibration": {
            "text": split.describe("calibration"),
            "samples": config.calibration_samples,
            "tokens_per_sample": config.calibration_tokens,
        },
        "quality": quality,
        "notes": notes,
    }
    progress("saving", 0, 1)
    with atomic_directory(out) as tmp:
        manifest = save_variant_files(model, tokenizer, tmp, manifest)
    progress("saving", 1, 1)

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
            recipe_json=json.dumps(manifest["recipe"]),
            execution=execution,
        )
    return result
