"""From a model and a recipe to the GGUF file llama.cpp runs, in one call: what the optimizer (and the
benchmark) use to put greenlm's own compression in the fast engine.

`gguf_for_recipe` compresses the model with the recipe (once per recipe, cached in `workdir`), then exports
it: with a quantization step on a GGUF format's grid (GPTQ / RTN with `gguf: auto`, AWQ with `fold: true`) the
file holds that step's own codes (`quant="auto"` picks their format); with `mixed=True` every matrix's type is
chosen for the fewest bytes read per token within `max_kld`, greenlm's codes from `codes_recipes` among the
candidates.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from greenlm.compress.config import CompressConfig
from greenlm.compress.pipeline import compress
from greenlm.errors import GreenlmError
from greenlm.export.config import DEFAULT_CANDIDATES, DEFAULT_MAX_KLD, ExportConfig
from greenlm.export.runner import ExportResult, export_model
from greenlm.io import noop
from greenlm.models.manifest import MANIFEST_NAME

Recipe = tuple[dict, ...] | list[dict]


def recipe_key(recipe: Recipe) -> str:
    return hashlib.sha256(json.dumps([dict(s) for s in recipe], sort_keys=True).encode()).hexdigest()[:12]


def variant_for(
    model: str | None,
    recipe: Recipe,
    workdir: str | Path,
    *,
    text: str | None = None,
    calibration_samples: int | None = None,
    calibration_tokens: int | None = None,
    threads: int | None = None,
) -> Path:
    """The variant of `model` made by `recipe`, compressed once into `workdir` and reused after."""
    target = Path(workdir) / "variants" / recipe_key(recipe)
    if (target / MANIFEST_NAME).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    extra = {
        k: v
        for k, v in (("calibration_samples", calibration_samples), ("calibration_tokens", calibration_tokens))
        if v is not None
    }
    compress(
        CompressConfig(
            recipe=[dict(s) for s in recipe],
            out=str(target),
            model=model,
            text=text,
            evaluate=False,
            threads=threads,
            **extra,
        )
    )
    return target


def gguf_for_recipe(
    model: str | None,
    out: str | Path,
    *,
    workdir: str | Path,
    recipe: Recipe = (),
    quant: str = "auto",
    mixed: bool = False,
    max_kld: float = DEFAULT_MAX_KLD,
    candidates: tuple[str, ...] = DEFAULT_CANDIDATES,
    codes_recipes: tuple[Recipe, ...] = (),
    text: str | None = None,
    calibration_samples: int | None = None,
    calibration_tokens: int | None = None,
    threads: int | None = None,
    force: bool = False,
    announce: Callable[[str], None] = noop,
) -> ExportResult:
    """Compress `model` with `recipe` (if any) and export the result to `out` as GGUF (see the module note).
    With `mixed`, `recipe` must be empty (the mix is chosen over the float model) and each of `codes_recipes`
    makes a variant whose codes are candidates."""
    if mixed and recipe:
        raise GreenlmError(
            "a mixed file is chosen over the float model: give the quantization recipes as codes_recipes"
        )
    if codes_recipes and not mixed:
        raise GreenlmError("codes_recipes offer candidates to a mixed file: set mixed=True")
    common = dict(
        text=text,
        calibration_samples=calibration_samples,
        calibration_tokens=calibration_tokens,
        threads=threads,
    )
    source = model
    if recipe:
        announce(f"compressing with {[dict(s) for s in recipe]}")
        source = str(variant_for(model, recipe, workdir, **common))
    codes_from = tuple(str(variant_for(model, r, workdir, **common)) for r in codes_recipes)
    config = ExportConfig(
        out=str(out),
        model=source,
        quant=quant,
        threads=threads,
        force=force,
        mixed=mixed,
        max_kld=max_kld if mixed else DEFAULT_MAX_KLD,
        candidates=candidates if mixed else DEFAULT_CANDIDATES,
        codes_from=codes_from,
        **({"text": text} if mixed and text else {}),
    )
    return export_model(config, announce=announce)
