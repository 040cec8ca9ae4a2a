"""Save the chosen candidate where the user asked, with the way it ran, so `measure`, `eval` and `serve` on
that directory run it the same way."""

from __future__ import annotations

import shutil
from pathlib import Path

from greenlm.io import atomic_directory, refuse_existing
from greenlm.models.run import RunSettings, save_run_settings
from greenlm.models.spec import resolve_model
from greenlm.optimize.config import EvalSettings
from greenlm.optimize.row import CANDIDATE_FIELDS, CandidateRow

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


def run_settings(best: CandidateRow) -> RunSettings:
    """How the chosen candidate ran, so the saved model runs the same way. `auto` is resolved to what it
    found (llama.cpp calls an offloaded run `gpu`)."""
    loaded = best.loaded
    device = (loaded.device if loaded else None) or "cpu"
    if device == "auto":
        used = (loaded.device_used if loaded else None) or "cpu"
        device = "cuda" if used in ("gpu", "cuda") or used.startswith("cuda") else "cpu"
    candidate = best.candidate
    return RunSettings(
        engine=candidate.engine, threads=candidate.threads, speculative=candidate.speculative, device=device
    )


def save_chosen(best: CandidateRow, out: str, settings: EvalSettings) -> str:
    """Copy the chosen candidate to `out` (atomically; `out` must not exist) with the way it ran: engine,
    threads, decoding and device, which `measure`, `eval` and `serve` on `out` then use."""
    target = Path(out)
    refuse_existing(target)
    model_path = best.loaded.model_path if best.loaded else None
    source = Path(model_path) if model_path else None
    if source is None:  # the parent itself, e.g. a GGUF run as given
        source = resolve_model(settings.model).path
    with atomic_directory(target) as staging:
        if source.is_dir():
            shutil.copytree(source, staging, dirs_exist_ok=True)
        else:
            shutil.copy2(source, staging / source.name)
        figures = best.to_dict()
        save_run_settings(staging, run_settings(best), {k: figures.get(k) for k in OUT_MANIFEST_FIELDS})
    return str(target)
