"""Float GGUF copies of Hugging Face models, made once so the llama.cpp engine can run any model greenlm loads."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from greenlm.errors import GreenlmError
from greenlm.io import atomic_file
from greenlm.llamacpp.gguf_writer import check_declared_architecture, write_model_gguf
from greenlm.llamacpp.verify import tokenizer_check
from greenlm.models.loader import load_model
from greenlm.models.spec import ModelSpec
from greenlm.paths import cache_dir

log = logging.getLogger(__name__)


def float_gguf_cache_path(spec: ModelSpec, outtype: str) -> Path:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", spec.path.name or spec.name)[:60]
    return cache_dir() / "gguf" / f"{stem}-{spec.fingerprint()}-{outtype}.gguf"


def check_convertible(spec: ModelSpec) -> None:
    """Refuse, from its config alone, a model the llama.cpp engine would have to export and cannot."""
    try:
        check_declared_architecture(spec)
    except GreenlmError as exc:
        raise GreenlmError(
            f"the llama.cpp engine runs GGUF files and {spec.name} is not one: {exc}; run it with "
            "--engine transformers"
        ) from None


def cached_float_gguf(spec: ModelSpec, outtype: str = "f32") -> tuple[Path, bool]:
    """(path of `spec` as a float GGUF of `outtype`, whether it was written now). Keyed by the weights'
    fingerprint, so a changed model is exported again."""
    path = float_gguf_cache_path(spec, outtype)
    if path.is_file():
        return path, False
    check_convertible(spec)
    log.warning(
        "llama.cpp runs GGUF files: exporting %s once to a %s GGUF in the cache (%s)",
        spec.name,
        outtype,
        path,
    )
    loaded = load_model(spec, dtype="float32")
    with atomic_file(path, overwrite=True, check=False) as tmp:
        write_model_gguf(loaded, spec, tmp, outtype=outtype)
        tokenizer_check(tmp, loaded.tokenizer)
    return path, True
