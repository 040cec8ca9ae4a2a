"""`evaluate`: the perplexity of a model on held-out text, and its KLD and top-1 agreement against a reference."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import replace

from greenlm.data import load_text, split_text
from greenlm.energy.payback import payback_from_store, training_energy_j
from greenlm.engines.available import check_engine_ready
from greenlm.engines.factory import create_engine
from greenlm.engines.saved import apply_saved_run
from greenlm.errors import GreenlmError
from greenlm.evaluate.compare import compare_to_reference
from greenlm.evaluate.config import EvalConfig
from greenlm.evaluate.reference import reference_stats
from greenlm.evaluate.result import EvalResult
from greenlm.io import noop
from greenlm.models import ModelSpec, resolve_model
from greenlm.models.manifest import MANIFEST_NAME, Manifest, is_variant_dir, read_manifest
from greenlm.progress import Progress, ProgressEvent, no_progress


def read_variant_manifest(spec: ModelSpec) -> Manifest | None:
    """The manifest of a variant directory written by `greenlm compress`, or None for any other model."""
    return read_manifest(spec.path) if is_variant_dir(spec.path) else None


def variant_parent(spec: ModelSpec, manifest: Manifest, announce: Callable[[str], None]) -> ModelSpec:
    """Resolve the parent a variant names in its manifest (by name, then by its recorded path)."""
    parent = manifest.parent
    if not isinstance(parent.get("name"), str):
        raise GreenlmError(
            f"{spec.path / MANIFEST_NAME} names no parent model: pass --reference (or --no-reference)"
        )
    candidates = [parent["name"]] + ([parent["path"]] if isinstance(parent.get("path"), str) else [])
    resolved = None
    for candidate in candidates:
        try:
            resolved = resolve_model(candidate)
            break
        except GreenlmError:
            continue
    if resolved is None:
        raise GreenlmError(
            f"the parent of variant {spec.name}, '{parent['name']}', cannot be found here: "
            "pass --reference with its location (or --no-reference for perplexity only)"
        )
    recorded = parent.get("fingerprint")
    if isinstance(recorded, str) and recorded != resolved.fingerprint():
        announce(
            f"note: the parent {resolved.name} has changed since variant {spec.name} was made "
            f"(fingerprint {recorded} then, {resolved.fingerprint()} now)"
        )
    return resolved


def _variant_summary(manifest: Manifest | None) -> dict | None:
    return manifest.summary() if manifest is not None else None


def evaluate(
    config: EvalConfig,
    *,
    store=None,
    progress: Progress | None = None,
    announce: Callable[[str], None] | None = None,
) -> EvalResult:
    """Evaluate `config.model` on the evaluation split. With a `store`, the result is saved (kind "eval")."""
    progress = progress or no_progress
    announce = announce or noop
    start = time.perf_counter()
    notes: list[str] = []

    def say(message: str) -> None:
        notes.append(message)
        announce(message)

    # Everything cheap first: a bad path, text or flag fails before a model loads.
    spec = resolve_model(config.model)
    config = apply_saved_run(config, spec, say)  # a model optimize saved runs as it was chosen
    manifest = read_variant_manifest(spec)
    ref_spec, ref_source = None, None
    if config.reference is not None:
        ref_spec, ref_source = resolve_model(config.reference), "--reference"
    elif manifest is not None and config.use_parent_reference:
        ref_spec, ref_source = variant_parent(spec, manifest, say), "variant parent"
        say(
            f"reference: {ref_spec.name}, the parent of variant {spec.name} (pass --reference to choose another)"
        )
    split = split_text(load_text(config.text))
    check_engine_ready(config.engine, spec)  # before a reference pass that may take minutes
    if ref_spec is not None:
        check_engine_ready(config.reference_engine, ref_spec)
    window = dict(
        window_tokens=config.window_tokens,
        max_eval_tokens=config.max_eval_tokens,
        top_k=config.top_k,
        tail_samples=config.tail_samples,
        batch_windows=config.batch_windows,
        use_cache=config.use_cache,
        threads=config.threads,
        device=config.device,
        announce=say,
    )

    if ref_spec is None:
        # Perplexity only. The model's own statistics go through the same cache a reference would use, so a
        # second evaluation of an unchanged model reads them instead of running it again.
        stats = reference_stats(
            spec, split, engine=config.engine, dtype=config.dtype, progress=progress, **window
        )
        quality = stats.quality()
        result = _result(
            spec,
            config,
            config.engine,
            stats.engine,
            stats,
            quality,
            model_cached=stats.cached,
            reference_cache=str(stats.path) if stats.path else None,
            variant=_variant_summary(manifest),
            notes=notes + stats.notes,
        )
    else:
        # The reference first (cold: one pass, then cached), closed before the model loads to bound memory.
        done_ref = 0

        def ref_progress(event: ProgressEvent) -> None:
            nonlocal done_ref
            done_ref = event.done
            progress(replace(event, total=2 * event.total))  # the model's pass over the same windows follows

        def model_progress(event: ProgressEvent) -> None:
            progress(replace(event, done=done_ref + event.done, total=done_ref + event.total))

        ref = reference_stats(
            ref_spec,
            split,
            engine=config.reference_engine,
            dtype="float32",
            progress=ref_progress,
            **window,
        )
        engine = create_engine(
            config.engine, spec, threads=config.threads, device=config.device, dtype=config.dtype
        )
        try:
            quality = compare_to_reference(
                engine,
                ref,
                batch_windows=config.batch_windows,
                progress=model_progress,
            )
            info = engine.describe()
        finally:
            engine.close()
        if quality.tokenizer_match is False:
            say(
                f"note: {spec.name}'s own tokenizer splits the text differently from {ref_spec.name}'s; "
                "both were fed the reference's token ids"
            )
        result = _result(
            spec,
            config,
            engine.name,
            info,
            ref,
            quality,
            reference=ref_spec.name,
            reference_identity=ref_spec.identity(),
            reference_source=ref_source,
            reference_engine=ref.engine,
            reference_cached=ref.cached,
            reference_s=ref.load_s,
            reference_cache=str(ref.path) if ref.path else None,
            variant=_variant_summary(manifest),
            notes=notes + ref.notes,
        )
    result.wall_s = time.perf_counter() - start
    training_j = training_energy_j(manifest.to_dict()) if manifest is not None else None
    if training_j is not None:
        result.payback = _payback(
            store, training_j, spec, manifest, ref_spec if ref_source == "variant parent" else None
        )
    if store is not None:
        result.run_id = store.add("eval", result.to_dict(), **_store_columns(result, manifest))
    return result


def _payback(store, training_j: float, spec: ModelSpec, manifest: Manifest, parent: ModelSpec | None) -> dict:
    """Payback of a variant made with training energy, from the store's measure rows of it and its parent."""
    recorded = manifest.parent
    if store is None:
        return {
            "status": "unmeasured",
            "training_j": training_j,
            "message": "no results store to read measurements from",
        }
    return payback_from_store(
        store,
        training_j,
        parent.fingerprint() if parent is not None else str(recorded.get("fingerprint")),
        spec.fingerprint(),
        parent_name=parent.name if parent is not None else str(recorded.get("name")),
        variant_name=spec.name,
    ).to_dict()


def _store_columns(result: EvalResult, manifest: Manifest | None) -> dict:
    columns: dict = {}
    if manifest is not None:
        columns["parent"] = manifest.parent.get("name")
        columns["execution"] = manifest.execution
        if manifest.recipe is not None:
            columns["recipe_json"] = json.dumps(manifest.recipe, default=str)
        columns["variant_id"] = manifest.variant_id or result.model_identity["fingerprint"]
    return columns


def _result(spec, config, engine: str, engine_info, text_stats, quality, **more) -> EvalResult:
    """An evaluation's result: the model, its engine, the text (from the statistics that read it), the
    quality; `more` says what it was compared with and where figures were cached."""
    return EvalResult(
        model=spec.name,
        model_identity=spec.identity(),
        engine=engine,
        engine_info=engine_info,
        text=text_stats.text,
        text_fingerprint=text_stats.text_fingerprint,
        text_tokens=text_stats.text_tokens,
        quality=quality,
        max_eval_tokens=config.max_eval_tokens,
        wall_s=0.0,
        **more,
    )
