"""How a saved model is meant to run: the engine, threads, decoding and device `greenlm optimize` chose it
with. `greenlm optimize --out` writes them (into the variant manifest's `run` entry, or into
`greenlm-optimize.json` beside a GGUF winner); `measure`, `eval` and `serve` on that directory run it that way
unless a flag says otherwise."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from greenlm.errors import GreenlmError
from greenlm.io import write_json_atomic
from greenlm.models.manifest import MANIFEST_NAME, read_manifest, write_manifest
from greenlm.models.spec import ModelSpec

OPTIMIZE_FILE = "greenlm-optimize.json"  # beside a GGUF winner (a directory holding one .gguf)


@dataclass(frozen=True)
class RunSettings:
    engine: str  # transformers | llamacpp
    threads: int | None = None  # None: the engine's default (all cores this process may use)
    speculative: str | None = None  # "prompt-lookup", or None for plain greedy decoding
    device: str = "cpu"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: Path) -> RunSettings:
        try:
            return cls(
                **{k: data.get(k) for k in ("engine", "threads", "speculative", "device") if k in data}
            )
        except TypeError as exc:
            raise GreenlmError(
                f"{source} has a malformed 'run' entry ({exc}): the saved model is corrupt"
            ) from None


def _directory(spec: ModelSpec) -> Path | None:
    """Where a saved model keeps its files: the directory itself, or the one holding a GGUF."""
    if spec.kind in ("variant", "hf-dir"):
        return spec.path
    if spec.kind == "gguf":
        return spec.path.parent
    return None  # built-in models carry no run settings


def saved_run_settings(spec: ModelSpec) -> RunSettings | None:
    """The run settings saved with `spec`, or None for a model nobody chose a way to run."""
    if spec.kind == "variant":
        run = read_manifest(spec.path).run
        if isinstance(run, dict):
            return RunSettings.from_dict(run, spec.path / MANIFEST_NAME)
    directory = _directory(spec)
    file = directory / OPTIMIZE_FILE if directory is not None else None
    if file is None or not file.is_file():
        return None
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GreenlmError(f"{file} is not valid JSON ({exc}): the saved model is corrupt") from None
    run = data.get("run") if isinstance(data, dict) else None
    return RunSettings.from_dict(run, file) if isinstance(run, dict) else None


def save_run_settings(directory: Path, settings: RunSettings, extra: dict | None = None) -> None:
    """Record `settings` in `directory`: the variant manifest's `run` entry when it is a variant, else
    `greenlm-optimize.json` (with `extra`, what the optimizer measured)."""
    directory = Path(directory)
    if (directory / MANIFEST_NAME).is_file():
        write_manifest(directory, replace(read_manifest(directory), run=settings.to_dict()))
    write_json_atomic(directory / OPTIMIZE_FILE, {**(extra or {}), "run": settings.to_dict()})
