"""What a GGUF file really holds, read back with gguf's own reader: its nominal type and every tensor's type.

A file's nominal type (general.file_type, e.g. q4_k_m) is what the quantizer was asked for; the tensors can
differ. k-quants work on 256-wide blocks, so on a model with 576-wide rows llama.cpp falls back to other types
for most tensors (a q4_k_m file of SmolLM2-135M is mostly q5_0). Reports say what is there.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import gguf

from greenlm.errors import GreenlmError


def _reader(path: Path):
    try:
        return gguf.GGUFReader(str(path))
    except Exception as exc:  # the reader raises ValueError, struct.error, IndexError... on a damaged file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GreenlmError(f"{path} is not a readable GGUF file ({first[:160]}): is it complete?") from None


def file_type_name(value: int) -> str:
    """gguf.LlamaFileType number → the name llama.cpp's quantizer uses, e.g. 15 → q4_k_m, 0 → f32."""
    try:
        member = gguf.LlamaFileType(value)
    except ValueError:
        return f"unknown({value})"
    return member.name.removeprefix("MOSTLY_").removeprefix("ALL_").lower()


def gguf_architecture(path: Path) -> str | None:
    """general.architecture of a GGUF file (llama, qwen2, ...)."""
    field = _reader(Path(path)).get_field("general.architecture")
    return None if field is None else str(field.contents())


@lru_cache(maxsize=32)
def _summary(path: str, size: int, mtime_ns: int) -> tuple[str | None, dict[str, int]]:
    """(nominal type, tensor count per type) of one version of a file. Parsing a GGUF's metadata reads every
    vocabulary entry (about 5 s for a 49k-token vocabulary), so each version is parsed once per process;
    size and mtime in the key make a rewritten file parse again."""
    reader = _reader(Path(path))
    field = reader.get_field("general.file_type")
    nominal = None if field is None else file_type_name(int(field.contents()))
    return nominal, dict(Counter(t.tensor_type.name.lower() for t in reader.tensors))


def _summary_of(path: Path) -> tuple[str | None, dict[str, int]]:
    path = Path(path)
    try:
        stat = path.stat()
    except OSError as exc:
        raise GreenlmError(f"{path} cannot be read ({exc.strerror}): check the path") from None
    return _summary(str(path), stat.st_size, stat.st_mtime_ns)


def file_quant_type(path: Path) -> str | None:
    return _summary_of(path)[0]


@dataclass
class TensorTypeReport:
    path: str
    file_mb: float
    nominal_type: str | None  # general.file_type
    tensors: int
    by_type: dict[str, dict]  # type name → {tensors, params, mb, share_of_params}
    fallback: list[dict]  # in a k-quant file, weight matrices held in another type, with their row width

    def to_dict(self) -> dict:
        return asdict(self)


def tensor_type_counts(path: Path) -> dict[str, int]:
    return dict(_summary_of(path)[1])  # a copy: the cached one stays as read


def tensor_type_report(path: str | Path) -> TensorTypeReport:
    """Per tensor type: how many tensors, parameters and MB; and, in a k-quant file, which weight matrices
    llama.cpp could not give a k-quant type (k-quant blocks are 256 wide)."""
    path = Path(path)
    reader = _reader(path)
    field = reader.get_field("general.file_type")
    nominal = file_type_name(int(field.contents())) if field is not None else None
    k_quant = bool(nominal) and "_k" in nominal
    total_params = sum(int(t.n_elements) for t in reader.tensors) or 1
    by_type: dict[str, dict] = {}
    fallback = []
    for t in reader.tensors:
        name = t.tensor_type.name.lower()
        entry = by_type.setdefault(name, {"tensors": 0, "params": 0, "mb": 0.0})
        entry["tensors"] += 1
        entry["params"] += int(t.n_elements)
        entry["mb"] += int(t.n_bytes) / 1e6
        # A weight matrix that a k-quant file holds in a non-k type: llama.cpp fell back (rows not 256-wide).
        if k_quant and len(t.shape) == 2 and "_k" not in name:
            fallback.append({"tensor": t.name, "type": name, "row_width": int(t.shape[0])})
    for entry in by_type.values():
        entry["mb"] = round(entry["mb"], 3)
        entry["share_of_params"] = round(entry["params"] / total_params, 4)
    return TensorTypeReport(
        path=str(path),
        file_mb=round(path.stat().st_size / 1e6, 3),
        nominal_type=nominal,
        tensors=len(reader.tensors),
        by_type=dict(sorted(by_type.items(), key=lambda kv: -kv[1]["params"])),
        fallback=fallback,
    )
