"""Execution backends behind one interface; `create_engine` picks one by name."""

from __future__ import annotations

from greenlm.engines.available import available_engines
from greenlm.engines.base import DecodeResult, Engine, PrefillResult
from greenlm.errors import GreenlmError
from greenlm.models import ModelSpec

ENGINE_NAMES = ("transformers", "llamacpp")


def create_engine(
    name: str, spec: ModelSpec, *, threads: int | None = None, device: str = "cpu", dtype: str = "float32"
) -> Engine:
    if name == "transformers":
        from greenlm.engines.transformers_engine import TransformersEngine

        return TransformersEngine.load(spec, threads=threads, device=device, dtype=dtype)
    if name == "llamacpp":
        from greenlm.engines.llamacpp_engine import LlamaCppEngine

        return LlamaCppEngine.load(spec, threads=threads, device=device, dtype=dtype)
    raise GreenlmError(f"unknown engine '{name}': choose one of {', '.join(ENGINE_NAMES)}")


__all__ = ["ENGINE_NAMES", "DecodeResult", "Engine", "PrefillResult", "available_engines", "create_engine"]
