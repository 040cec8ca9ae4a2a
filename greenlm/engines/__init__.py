"""Execution backends behind one interface; `create_engine` picks one by name."""

from __future__ import annotations

from greenlm.engines.available import available_engines
from greenlm.engines.base import DecodeResult, Engine, PrefillResult
from greenlm.engines.speculative import SpeculativeConfig
from greenlm.errors import GreenlmError
from greenlm.models import ModelSpec

ENGINE_NAMES = ("transformers", "llamacpp")


def check_speculative_engine(name: str, speculative: SpeculativeConfig | None) -> None:
    """Speculative decoding runs on the llama.cpp engine only; say so before anything loads."""
    if speculative is not None and name != "llamacpp":
        raise GreenlmError(
            f"speculative decoding is not supported by the {name} engine (only llamacpp drafts and verifies "
            "tokens): add --engine llamacpp or drop --speculative"
        )


def create_engine(
    name: str,
    spec: ModelSpec,
    *,
    threads: int | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    speculative: SpeculativeConfig | None = None,
) -> Engine:
    """Load `spec` on engine `name`. `speculative` (llamacpp only) makes decode draft and verify tokens; the
    generated tokens stay those of plain greedy decoding."""
    if name not in ENGINE_NAMES:
        raise GreenlmError(f"unknown engine '{name}': choose one of {', '.join(ENGINE_NAMES)}")
    check_speculative_engine(name, speculative)
    if name == "transformers":
        from greenlm.engines.transformers_engine import TransformersEngine

        return TransformersEngine.load(spec, threads=threads, device=device, dtype=dtype)
    from greenlm.engines.llamacpp_engine import LlamaCppEngine

    return LlamaCppEngine.load(spec, threads=threads, device=device, dtype=dtype, speculative=speculative)


__all__ = [
    "ENGINE_NAMES",
    "DecodeResult",
    "Engine",
    "PrefillResult",
    "SpeculativeConfig",
    "available_engines",
    "create_engine",
]
