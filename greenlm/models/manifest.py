"""`greenlm-variant.json`: the manifest that makes a directory a greenlm variant (recipe, parent identity,
`execution` real | simulated, per-step reports, quality at creation, how to run it). Reading it needs no torch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from greenlm.errors import GreenlmError
from greenlm.io import write_json_atomic

MANIFEST_NAME = "greenlm-variant.json"
MANIFEST_FORMAT = "greenlm-variant/1"


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


def dir_size_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    write_json_atomic(Path(directory) / MANIFEST_NAME, manifest)
