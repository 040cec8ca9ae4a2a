"""Judge one candidate: build it, screen its KLD cheaply, skip it when the front already beats it, and
otherwise measure its full quality and its energy. Runs in the driver or on a Ray worker alike.

Every outcome is a row (`optimize.row.CandidateRow`, status measured | rejected-screen | skipped-dominated |
failed, with the reason), so the store explains why each candidate did or did not make it.
"""

from __future__ import annotations

import socket
import statistics
import time
from dataclasses import fields
from pathlib import Path

from greenlm.engines.factory import create_engine
from greenlm.engines.speculative import SpeculativeConfig
from greenlm.errors import GreenlmError
from greenlm.evaluate.compare import compare_to_reference
from greenlm.evaluate.reference import reference_stats
from greenlm.export.config import ExportConfig
from greenlm.export.fastpath import gguf_for_recipe, recipe_key, variant_for
from greenlm.export.runner import export_model
from greenlm.models.manifest import MANIFEST_NAME, read_manifest
from greenlm.models.spec import resolve_model
from greenlm.optimize.config import EvalSettings
from greenlm.optimize.row import CandidateRow, Energy, Loaded, Probe, Quality, Screen, Status, TrainingCost
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


def same_execution(candidate: Candidate, device: str, row: CandidateRow) -> bool:
    """`row` ran the way `candidate` would: same engine, threads, decoding and device. Only then do their
    costs compare (1 vs 2 threads, or greedy vs speculative, change the cost of the same file)."""
    return (
        row.candidate.engine == candidate.engine
        and row.candidate.threads == candidate.threads
        and row.candidate.speculative == candidate.speculative
        and row.loaded is not None
        and row.loaded.device == device
    )


def dominated_by(
    candidate: Candidate,
    device: str,
    screen_kld: float,
    probe_j: float,
    front: list[CandidateRow],
    margin: float,
) -> CandidateRow | None:
    """A measured front member that runs the same way, is no worse in screened quality and whose probe cost
    less by more than the probe's noise margin; None when nothing is clearly better (then measure in full).
    Like is compared with like: screen KLD with screen KLD, probe with probe."""
    for member in front:
        member_kld = member.screen.screen_kld if member.screen else None
        member_j = member.probe.probe_j_per_token if member.probe else None
        if (
            same_execution(candidate, device, member)
            and member_kld is not None
            and member_j is not None
            and member_kld <= screen_kld
            and member_j * (1 + margin) <= probe_j
        ):
            return member
    return None


def _phase_j_per_token(measure: dict) -> dict[str, float]:
    per_repeat = measure["per_repeat"]
    return {
        phase: statistics.median(r[f"{phase}_j"] / r["generated_tokens"] for r in per_repeat)
        for phase in ("prefill", "decode")
    }


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


def _build(settings: EvalSettings, candidate: Candidate, row: CandidateRow) -> str | None:
    """Make the file the candidate runs (variant, GGUF) and record how it executes; its path (None: the
    built-in parent as it is)."""
    variant = _variant_dir(settings, candidate.recipe)
    row.execution = "real"
    if variant is not None:
        manifest = read_manifest(variant)
        row.execution = manifest.execution
        training = manifest.training or {}
        # healing's bill is the candidate's too: payback in the summary and the report reads it
        row.training = TrainingCost(training.get("energy_j"), training.get("carbon_g"))
    path = variant
    if candidate.engine == "llamacpp":
        path = _gguf_file(settings, candidate, variant)
        row.execution = "real"  # llama.cpp runs its quantized types on their own kernels
    return str(path) if path is not None else settings.model


def _screened_out(settings: EvalSettings, engine, reference, row: CandidateRow, baseline: bool) -> bool:
    """Screen the candidate's KLD on a few tokens; True (and the row says why) when it is hopeless. A baseline
    is never screened out: every ratio is to the baselines."""
    row.screen = Screen(eval_text=reference.text)
    screen = compare_to_reference(engine, reference, max_eval_tokens=settings.screen_eval_tokens)
    row.screen.screen_kld = screen.kld
    limit = settings.screen_margin * settings.budget.max_kld
    if baseline or screen.kld is None or screen.kld <= limit or settings.budget.max_kld <= 0:
        return False
    row.status = Status.REJECTED_SCREEN
    row.reason = (
        f"screen KLD {screen.kld:.4f} on {screen.tokens_evaluated} tokens exceeds "
        f"{settings.screen_margin:g}x the budget ({limit:.4f})"
    )
    return True


def _skipped(
    settings: EvalSettings, candidate: Candidate, engine, model_path, front: list[CandidateRow] | None, row
) -> bool:
    """Probe the candidate's energy briefly; True (and the row names the member) when a front member running
    the same way is better and clearly cheaper."""
    probe = run_measure(
        measure_config(settings, candidate, model_path, repeats=settings.probe_repeats, num_prompts=1),
        engine=engine,
    ).to_dict()
    probe_j = probe["decode_j_per_token"]
    row.probe = Probe(probe_j, probe["spread"]["decode_j_per_token"])
    if front is None or row.execution != "real":
        return False
    screen_kld = row.screen.screen_kld or 0.0
    better = dominated_by(candidate, settings.device, screen_kld, probe_j, front, settings.probe_margin)
    if better is None:
        return False
    row.status = Status.SKIPPED_DOMINATED
    row.reason = (
        f"{better.label} runs the same way with screen KLD {better.screen.screen_kld:.4f} <= {screen_kld:.4f} "
        f"and probe {better.probe.probe_j_per_token:.4g} J/token, "
        f"{probe_j / better.probe.probe_j_per_token:.2f}x less than this one's"
    )
    return True


def _measure(settings: EvalSettings, candidate: Candidate, engine, reference, model_path, row) -> None:
    """Full quality against the reference, then the full energy workload."""
    full = compare_to_reference(engine, reference, max_eval_tokens=settings.eval_tokens)
    row.quality = Quality(**{f.name: getattr(full, f.name) for f in fields(Quality)})
    config = measure_config(
        settings, candidate, model_path, repeats=settings.repeats, num_prompts=settings.num_prompts
    )
    measure = run_measure(config, engine=engine).to_dict()
    figures = {f.name: measure.get(f.name) for f in fields(Energy) if f.name != "phase_j_per_token"}
    row.energy = Energy(**figures, phase_j_per_token=_phase_j_per_token(measure))
    row.status = Status.MEASURED


def evaluate_candidate(
    settings: EvalSettings, candidate: Candidate, front: list[CandidateRow] | None
) -> CandidateRow:
    """Build, screen, probe, and measure `candidate` in full unless the screen or the front rule it out.
    `front=None` (a baseline) measures in full whatever the screen says: every ratio is to the baselines."""
    start = time.perf_counter()
    row = CandidateRow(
        key=candidate.key,
        label=candidate.label,
        candidate=candidate,
        host=socket.gethostname(),
        model=settings.model or "smollm2-135m",
    )
    engine = None
    try:
        model_path = _build(settings, candidate, row)
        row.loaded = Loaded(model_path=model_path)
        engine = load_candidate_engine(settings, candidate, model_path)
        row.loaded = Loaded(
            model_path, model_bytes(engine) / 2**20, engine.threads, settings.device, engine.device
        )
        reference = reference_stats(settings.model, settings.text, max_eval_tokens=settings.eval_tokens)
        if not _screened_out(settings, engine, reference, row, baseline=front is None) and not _skipped(
            settings, candidate, engine, model_path, front, row
        ):
            _measure(settings, candidate, engine, reference, model_path, row)
    except GreenlmError as exc:
        row.status, row.reason = Status.FAILED, str(exc)
    finally:
        if engine is not None:
            engine.close()
        row.wall_s = time.perf_counter() - start
    return row
