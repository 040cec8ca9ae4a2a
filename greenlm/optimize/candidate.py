"""Judge one candidate: build it, screen its KLD cheaply, skip it when the front already beats it, and
otherwise measure its full quality and its energy. Runs in the driver or on a Ray worker alike.

Every outcome is a record (status measured | rejected-screen | skipped-dominated | failed) with the reason,
so the store explains why each candidate did or did not make it.
"""

from __future__ import annotations

import json
import shutil
import socket
import statistics
import time
from pathlib import Path

from greenlm.engines.factory import create_engine
from greenlm.engines.speculative import SpeculativeConfig
from greenlm.errors import GreenlmError
from greenlm.evaluate.compare import compare_to_reference
from greenlm.evaluate.reference import reference_stats
from greenlm.export.config import ExportConfig
from greenlm.export.fastpath import gguf_for_recipe, recipe_key, variant_for
from greenlm.export.runner import export_model
from greenlm.io import atomic_directory, refuse_existing
from greenlm.models.manifest import MANIFEST_NAME
from greenlm.models.run import RunSettings, save_run_settings
from greenlm.models.spec import resolve_model
from greenlm.optimize.config import EvalSettings
from greenlm.optimize.space import CODES, MIXED, Candidate
from greenlm.workload.config import MeasureConfig
from greenlm.workload.runner import run_measure


def _variant_dir(settings: EvalSettings, recipe) -> Path | None:
    """Build (once per recipe) the compressed variant; None when the candidate uses the parent as is."""
    if not recipe:
        return None
    try:
        return variant_for(settings.model, recipe, settings.workdir, text=settings.text)
    except GreenlmError:
        target = Path(settings.workdir) / "variants" / recipe_key(recipe)
        if not (target / MANIFEST_NAME).is_file():  # another worker may have built it meanwhile
            raise
        return target


def _gguf_file(settings: EvalSettings, candidate: Candidate, source: Path | None) -> Path:
    """The llama.cpp file for the candidate (built once per search): the parent's own GGUF when it is one and
    nothing is changed; the recipe's own codes as GGUF blocks (`codes`); a per-tensor mix over the float parent
    (`mixed`); else the parent or variant exported and quantized by llama.cpp."""
    if source is None and candidate.quant_type is None:
        parent = resolve_model(settings.model)
        if parent.is_gguf:
            return parent.path
    quant = candidate.quant_type or "f16"
    if quant == MIXED:
        name = f"mixed-{candidate.key}.gguf"
    else:
        name = f"{candidate.recipe_key}-{quant}.gguf"
    target = Path(settings.workdir) / "gguf" / name
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    if quant == MIXED:
        gguf_for_recipe(
            settings.model,
            target,
            workdir=settings.workdir,
            mixed=True,
            max_kld=candidate.mixed_max_kld,
            codes_recipes=candidate.codes_from,
            text=settings.text,
        )
        return target
    result = export_model(
        ExportConfig(
            out=str(target),
            model=str(source) if source else settings.model,
            quant="auto" if quant == CODES else quant,
        )
    )
    if quant == CODES and not result.codes:
        target.unlink(missing_ok=True)
        raise GreenlmError(
            f"the recipe {[dict(s) for s in candidate.recipe]} made no GGUF-format codes (its grid matches no "
            "GGUF block type): use gguf: auto with 4/5/8 bits in groups of 32, or a llama.cpp quant type"
        )
    return target


def model_bytes(engine) -> int:
    """Bytes of weights the engine streams per decode step."""
    info = engine.describe()
    if info.get("file_mb") is not None:
        return int(info["file_mb"] * 2**20)
    model = getattr(engine, "model", None)
    tensors = list(model.parameters()) + list(model.buffers()) if model is not None else []
    seen = {t.data_ptr(): t.numel() * t.element_size() for t in tensors}  # tied weights once
    return sum(seen.values())


def same_execution(candidate: Candidate, device: str, row: dict) -> bool:
    """`row` ran the way `candidate` would: same engine, threads, decoding and device. Only then do their
    costs compare (1 vs 2 threads, or greedy vs speculative, change the cost of the same file)."""
    return (
        row.get("engine") == candidate.engine
        and row.get("threads") == candidate.threads
        and row.get("speculative") == candidate.speculative
        and row.get("device") == device
    )


def dominated_by(
    candidate: Candidate, device: str, screen_kld: float, probe_j: float, front: list[dict], margin: float
) -> dict | None:
    """A measured front member that runs the same way, is no worse in screened quality and whose probe cost
    less by more than the probe's noise margin; None when nothing is clearly better (then measure in full).
    Like is compared with like: screen KLD with screen KLD, probe with probe."""
    for member in front:
        if (
            same_execution(candidate, device, member)
            and member.get("screen_kld") is not None
            and member.get("probe_j_per_token") is not None
            and member["screen_kld"] <= screen_kld
            and member["probe_j_per_token"] * (1 + margin) <= probe_j
        ):
            return member
    return None


def _phase_j_per_token(measure: dict) -> dict[str, float]:
    per_repeat = measure["per_repeat"]
    return {
        phase: statistics.median(r[f"{phase}_j"] / r["generated_tokens"] for r in per_repeat)
        for phase in ("prefill", "decode")
    }


MEASURE_FIELDS = (
    "decode_j_per_token",
    "prefill_j_per_token",
    "decode_tokens_per_s",
    "prefill_tokens_per_s",
    "ttft_s",
    "tpot_s",
    "tokens_per_j",
    "carbon_g_per_1k_tokens",
    "intensity_g_per_kwh",
    "intensity_source",
    "pue",
    "meter",
    "energy_source",
    "meter_note",
    "text",
    "peak_rss_mb",
    "repeats",
    "spread",
    "acceptance_rate",  # speculative decoding only
)
QUALITY_FIELDS = (
    "ppl",
    "ppl_reference",
    "ppl_increase_pct",
    "ppl_increase_pct_stderr",
    "kld",
    "kld_stderr",
    "kld_method",
    "top1_agreement",
    "tokens_evaluated",
)


def measure_config(
    settings: EvalSettings, candidate: Candidate, model_path: str | None, *, repeats: int, num_prompts: int
) -> MeasureConfig:
    """The workload every candidate (and baseline) is measured on; only repeats and prompts vary."""
    return MeasureConfig(
        model=model_path,
        engine=candidate.engine,
        text=settings.text,
        num_prompts=num_prompts,
        prompt_tokens=settings.prompt_tokens,
        max_new_tokens=settings.max_new_tokens,
        repeats=repeats,
        threads=candidate.threads,
        device=settings.device,
        energy=settings.energy,
        speculative=SpeculativeConfig(candidate.speculative) if candidate.speculative else None,
    )


def load_candidate_engine(settings: EvalSettings, candidate: Candidate, model_path: str | None):
    spec = resolve_model(model_path)
    speculative = SpeculativeConfig(candidate.speculative) if candidate.speculative else None
    return create_engine(
        candidate.engine, spec, threads=candidate.threads, device=settings.device, speculative=speculative
    )


def evaluate_candidate(settings: EvalSettings, candidate: Candidate, front: list[dict] | None) -> dict:
    """Build, screen, probe, and measure `candidate` in full unless the screen or the front rule it out.
    `front=None` (a baseline) measures in full whatever the screen says: every ratio is to the baselines."""
    start = time.perf_counter()
    record = {
        **candidate.to_dict(),
        "speculative": candidate.speculative,
        "key": candidate.key,
        "label": candidate.label,
        "host": socket.gethostname(),
        "model": settings.model or "smollm2-135m",
    }
    engine = None
    try:
        variant = _variant_dir(settings, candidate.recipe)
        record["execution"] = "real"
        if variant is not None:
            manifest = json.loads((variant / MANIFEST_NAME).read_text())
            record["execution"] = manifest["execution"]
            training = manifest.get("training") or {}
            # healing's bill is the candidate's too: payback in the summary and the report reads it
            record["training_energy_j"] = training.get("energy_j")
            record["training_carbon_g"] = training.get("carbon_g")
        if candidate.engine == "llamacpp":
            path = _gguf_file(settings, candidate, variant)
            record["execution"] = "real"  # llama.cpp runs its quantized types on their own kernels
        else:
            path = variant
        model_path = str(path) if path is not None else settings.model
        record["model_path"] = model_path
        engine = load_candidate_engine(settings, candidate, model_path)
        record["size_mb"] = model_bytes(engine) / 2**20
        record["threads_used"] = engine.threads
        record["device"] = settings.device
        record["device_used"] = engine.device

        reference = reference_stats(settings.model, settings.text, max_eval_tokens=settings.eval_tokens)
        record["eval_text"] = reference.text
        screen = compare_to_reference(engine, reference, max_eval_tokens=settings.screen_eval_tokens)
        record["screen_kld"] = screen.kld
        limit = settings.screen_margin * settings.budget.max_kld
        if (
            front is not None
            and screen.kld is not None
            and screen.kld > limit
            and settings.budget.max_kld > 0
        ):
            record.update(
                status="rejected-screen",
                reason=f"screen KLD {screen.kld:.4f} on {screen.tokens_evaluated} tokens exceeds "
                f"{settings.screen_margin:g}x the budget ({limit:.4f})",
            )
            return record
        probe = run_measure(
            measure_config(settings, candidate, model_path, repeats=settings.probe_repeats, num_prompts=1),
            engine=engine,
        ).to_dict()
        record["probe_j_per_token"] = probe["decode_j_per_token"]
        record["probe_spread"] = probe["spread"]["decode_j_per_token"]
        if front is not None and record["execution"] == "real":
            better = dominated_by(
                candidate, settings.device, screen.kld or 0.0, probe["decode_j_per_token"], front,
                settings.probe_margin,
            )  # fmt: skip
            if better is not None:
                record.update(
                    status="skipped-dominated",
                    reason=f"{better['label']} runs the same way with screen KLD {better['screen_kld']:.4f} <= "
                    f"{screen.kld:.4f} and probe {better['probe_j_per_token']:.4g} J/token, "
                    f"{probe['decode_j_per_token'] / better['probe_j_per_token']:.2f}x less than this one's",
                )
                return record
        full = compare_to_reference(engine, reference, max_eval_tokens=settings.eval_tokens)
        record.update({k: getattr(full, k) for k in QUALITY_FIELDS})
        measure = run_measure(
            measure_config(
                settings, candidate, model_path, repeats=settings.repeats, num_prompts=settings.num_prompts
            ),
            engine=engine,
        ).to_dict()
        record.update({k: measure.get(k) for k in MEASURE_FIELDS})
        record["phase_j_per_token"] = _phase_j_per_token(measure)
        record["status"] = "measured"
    except GreenlmError as exc:
        record.update(status="failed", reason=str(exc))
    finally:
        if engine is not None:
            engine.close()
        record["wall_s"] = time.perf_counter() - start
    return record


# what a candidate is and what it costs: the first fields of both the search summary and the saved choice
CANDIDATE_FIELDS = (
    "label",
    "recipe",
    "engine",
    "quant_type",
    "threads",
    "speculative",
    "device",
    "decode_j_per_token",
    "decode_tokens_per_s",
)
OUT_MANIFEST_FIELDS = (
    *CANDIDATE_FIELDS,
    "ppl",
    "ppl_increase_pct",
    "kld",
    "top1_agreement",
    "meter",
    "energy_source",
    "host",
    "search_id",
    "model",
)


def run_settings(best: dict) -> RunSettings:
    """How the chosen candidate ran, so the saved model runs the same way. `auto` is resolved to what it
    found (llama.cpp calls an offloaded run `gpu`)."""
    device = best.get("device") or "cpu"
    if device == "auto":
        used = best.get("device_used") or "cpu"
        device = "cuda" if used in ("gpu", "cuda") or used.startswith("cuda") else "cpu"
    return RunSettings(
        engine=best["engine"], threads=best.get("threads"), speculative=best.get("speculative"), device=device
    )


def save_chosen(best: dict, out: str, settings: EvalSettings) -> str:
    """Copy the chosen candidate to `out` (atomically; `out` must not exist) with the way it ran: engine,
    threads, decoding and device, which `measure`, `eval` and `serve` on `out` then use."""
    target = Path(out)
    refuse_existing(target)
    source = Path(best["model_path"]) if best.get("model_path") else None
    if source is None:  # the parent itself, e.g. a GGUF run as given
        source = resolve_model(settings.model).path
    with atomic_directory(target) as staging:
        if source.is_dir():
            shutil.copytree(source, staging, dirs_exist_ok=True)
        else:
            shutil.copy2(source, staging / source.name)
        save_run_settings(staging, run_settings(best), {k: best.get(k) for k in OUT_MANIFEST_FIELDS})
    return str(target)
