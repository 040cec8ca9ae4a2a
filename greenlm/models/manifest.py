"""`greenlm-variant.json`: the manifest that makes a directory a greenlm variant, one type for what `compress` and
`distill` write and what `export` records of a variant in its GGUF. Reading it needs no torch.

The common part says what the variant is: the model it was made from (`parent`), the `recipe` that rebuilds
it, `execution` (real | simulated), each step's report, the architecture, calibration, quality at creation and
notes. `training` is the method's own section (a distillation's, or a healed cut's, training energy, loss and
teacher). The files part (`weights`, `quantized_modules`, `codes`) is filled in when the variant is saved, and
`run` when `optimize` chooses how it runs. Keys this greenlm does not know are kept as they were written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from greenlm.errors import GreenlmError
from greenlm.io import write_json_atomic

MANIFEST_NAME = "greenlm-variant.json"
MANIFEST_FORMAT = "greenlm-variant/1"
EXECUTIONS = ("real", "simulated")
# written only when set (older variants and most methods have none)
_WHEN_SET = ("training", "codes", "run")


@dataclass
class Manifest:
    parent: dict[str, Any]  # identity of the model it was made from (a distillation's: the teacher)
    execution: str  # real | simulated
    recipe: Any = None  # {"steps": [...]}, the steps that rebuild it
    variant_id: str | None = None
    created_at: str | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)  # each step's report
    architecture: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = None
    quality: dict[str, Any] | None = None  # measured at creation against the parent; None when not measured
    notes: list[str] = field(default_factory=list)
    training: dict[str, Any] | None = None  # the method's own section: training energy, loss, teacher
    format: str = MANIFEST_FORMAT
    weights: dict[str, Any] | None = None  # file, layout, whether plain transformers loads it
    quantized_modules: dict[str, dict[str, Any]] = field(default_factory=dict)  # {name: {kind, spec}}
    codes: dict[str, Any] | None = None  # integer codes of layers kept as dense floats (models.variant)
    run: dict[str, Any] | None = None  # how `optimize` chose to run it (models.run)
    extra: dict[str, Any] = field(default_factory=dict)  # keys this greenlm does not know

    @classmethod
    def from_dict(cls, data: Any, source: str | Path = MANIFEST_NAME) -> Manifest:
        """The manifest in `data` (read from `source`), checked enough that loading the variant will not
        surprise."""
        if not isinstance(data, dict) or not isinstance(data.get("parent"), dict):
            raise GreenlmError(f"{source} lacks the 'parent' entry: the variant directory is corrupt")
        if data.get("execution") not in EXECUTIONS:
            raise GreenlmError(
                f"{source} has no valid 'execution' (real or simulated): the variant directory is corrupt"
            )
        modules = data.get("quantized_modules") or {}
        if not isinstance(modules, dict) or any(
            not isinstance(m, dict) or "kind" not in m or "spec" not in m for m in modules.values()
        ):
            raise GreenlmError(
                f"{source} has a malformed 'quantized_modules' entry: the variant directory is corrupt"
            )
        known = {f.name for f in fields(cls)} - {"extra"}
        values = {k: v for k, v in data.items() if k in known and v is not None}
        values["quantized_modules"] = modules
        return cls(**values, extra={k: v for k, v in data.items() if k not in known})

    def to_dict(self) -> dict[str, Any]:
        """The manifest as written: the common part, the method's section, the files, then unknown keys."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        order = (
            "variant_id", "created_at", "recipe", "parent", "execution", "steps", "architecture", "calibration",
            "quality", "notes", "training", "format", "weights", "quantized_modules", "codes", "run",
        )  # fmt: skip
        written = {k: data[k] for k in order if not (k in _WHEN_SET and data[k] is None)}
        return {**written, **self.extra}

    def provenance(self) -> dict[str, Any]:
        """Where the variant came from, as an export records it in its file: parent, recipe, execution."""
        return {"parent": self.parent, "recipe": self.recipe, "execution": self.execution}

    def summary(self) -> dict[str, Any]:
        """What an evaluation reports of the variant it evaluated."""
        values = {**self.provenance(), "variant_id": self.variant_id}
        return {
            k: values[k] for k in ("execution", "recipe", "parent", "variant_id") if values[k] is not None
        }


def is_variant_dir(path: Path) -> bool:
    return path.is_dir() and (path / MANIFEST_NAME).is_file()


def read_manifest(path: str | Path) -> Manifest:
    """The manifest of variant directory `path`."""
    file = Path(path) / MANIFEST_NAME
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GreenlmError(f"{path} has no {MANIFEST_NAME}: it is not a greenlm variant directory") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GreenlmError(f"{file} is not valid JSON ({exc}): the variant directory is corrupt") from None
    return Manifest.from_dict(data, file)


def write_manifest(directory: Path, manifest: Manifest) -> None:
    write_json_atomic(Path(directory) / MANIFEST_NAME, manifest.to_dict())


def dir_size_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
