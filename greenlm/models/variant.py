"""Variant directories: what `greenlm compress` writes, and how greenlm (and plain transformers) reload it.

A variant is a Hugging Face model directory plus `greenlm-variant.json`, the manifest holding the recipe, the
parent's identity, `execution` (real | simulated), per-step reports and the quality measured at creation.
Dense variants are ordinary transformers checkpoints. Variants with low-bit modules store their tensors in
`greenlm-quantized.safetensors` (a name transformers does not pick up by mistake) and list each module's
kind and spec in the manifest, so greenlm rebuilds the modules empty and fills them from the file.
The directory appears whole or not at all: it is written under a temporary name beside the target, then
renamed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from greenlm.errors import GreenlmError

MANIFEST_NAME = "greenlm-variant.json"
MANIFEST_FORMAT = "greenlm-variant/1"
QUANTIZED_WEIGHTS = "greenlm-quantized.safetensors"
PARTIAL_SUFFIX = ".partial"


def is_variant_dir(path: Path) -> bool:
    return path.is_dir() and (path / MANIFEST_NAME).is_file()


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of variant directory `path`, checked enough that loading it will not surprise."""
    file = Path(path) / MANIFEST_NAME
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GreenlmError(f"{path} has no {MANIFEST_NAME}: it is not a greenlm variant directory") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GreenlmError(f"{file} is not valid JSON ({exc}): the variant directory is corrupt") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("parent"), dict):
        raise GreenlmError(f"{file} lacks the 'parent' entry: the variant directory is corrupt")
    if manifest.get("execution") not in ("real", "simulated"):
        raise GreenlmError(
            f"{file} has no valid 'execution' (real or simulated): the variant directory is corrupt"
        )
    modules = manifest.get("quantized_modules") or {}
    if not isinstance(modules, dict) or any(
        not isinstance(m, dict) or "kind" not in m or "spec" not in m for m in modules.values()
    ):
        raise GreenlmError(
            f"{file} has a malformed 'quantized_modules' entry: the variant directory is corrupt"
        )
    return manifest


def quantized_modules(model) -> dict[str, dict[str, Any]]:
    """`{module name: {kind, spec}}` for every low-bit module that replaced an nn.Linear."""
    from greenlm.compress.base import QuantizedModule

    return {
        name: {"kind": module.kind, "spec": module.spec()}
        for name, module in model.named_modules()
        if isinstance(module, QuantizedModule)
    }


def dir_size_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    tmp = directory / (MANIFEST_NAME + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, directory / MANIFEST_NAME)


def save_variant_files(model, tokenizer, directory: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write weights, config, tokenizer and manifest into `directory` (a temporary one: see `atomic_directory`).
    Returns the manifest as written, with the weight layout and quantized-module specs filled in."""
    from safetensors.torch import save_model

    modules = quantized_modules(model)
    if modules:
        model.config.save_pretrained(directory)
        # save_model drops tied duplicates (lm_head = embed_tokens) that save_file would refuse
        save_model(model, str(directory / QUANTIZED_WEIGHTS), metadata={"format": "pt"})
        weights = {"file": QUANTIZED_WEIGHTS, "layout": "greenlm-quantized", "plain_transformers": False}
    else:
        model.save_pretrained(directory)
        weights = {"file": "model.safetensors", "layout": "transformers", "plain_transformers": True}
    if (
        getattr(model, "generation_config", None) is not None
        and not (directory / "generation_config.json").exists()
    ):
        model.generation_config.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    manifest = dict(manifest, format=MANIFEST_FORMAT, weights=weights, quantized_modules=modules)
    write_manifest(directory, manifest)
    return manifest


@contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Yield a temporary directory beside `target`; on success rename it to `target`, on any failure or
    interrupt remove it, so `target` is never seen half-written."""
    target = Path(target).expanduser()
    refuse_existing(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=PARTIAL_SUFFIX, dir=target.parent))
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; the variant should not be
    except OSError as exc:
        raise GreenlmError(f"cannot create the output directory {target}: {exc.strerror or exc}") from None
    try:
        yield tmp
        refuse_existing(target)  # someone may have made it while we worked: never overwrite
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def refuse_existing(target: Path) -> None:
    if target.exists():
        raise GreenlmError(
            f"output directory {target} already exists: choose another --out or remove it first (nothing was written)"
        )


def load_variant(path: Path, dtype) -> tuple[Any, Any]:
    """Load variant directory `path` as (model, tokenizer) in `dtype` (a torch dtype)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    manifest = read_manifest(path)
    modules = manifest.get("quantized_modules") or {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        if not modules:
            return AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype), tokenizer
        config = AutoConfig.from_pretrained(str(path))
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    except GreenlmError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GreenlmError(f"cannot load variant {path}: {first[:200]}") from None
    _rebuild_quantized(model, modules, path)
    return model, tokenizer


def _rebuild_quantized(model, modules: dict[str, dict], path: Path) -> None:
    from safetensors.torch import load_model as load_safetensors

    import greenlm.compress  # noqa: F401  (registers every quantized module kind)
    from greenlm.compress.base import QUANTIZED_MODULES

    for name, entry in modules.items():
        cls = QUANTIZED_MODULES.get(entry["kind"])
        if cls is None:
            raise GreenlmError(
                f"variant {path} uses quantized module kind '{entry['kind']}' that this greenlm does not know "
                f"(known: {', '.join(sorted(QUANTIZED_MODULES)) or 'none'}): upgrade greenlm"
            )
        parent_name, _, child = name.rpartition(".")
        try:
            parent = model.get_submodule(parent_name) if parent_name else model
        except AttributeError:
            raise GreenlmError(
                f"variant {path} lists module '{name}' that its config does not have: it is corrupt"
            ) from None
        setattr(parent, child, cls.from_spec(entry["spec"]))
    file = path / QUANTIZED_WEIGHTS
    if not file.is_file():
        raise GreenlmError(
            f"variant {path} is missing {QUANTIZED_WEIGHTS}: the variant directory is incomplete"
        )
    try:
        load_safetensors(model, str(file), strict=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GreenlmError(f"cannot load the weights of variant {path}: {first[:200]}") from None
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()
