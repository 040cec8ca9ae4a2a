"""Engine names and the checks configs run on them: light (no torch), so `--engine` is validated before
anything loads. `engines.factory.create_engine` loads a model on one."""

from __future__ import annotations

from greenlm.engines.speculative import SpeculativeConfig
from greenlm.errors import GreenlmError

ENGINE_NAMES = ("transformers", "llamacpp")


def check_engine_name(name: str) -> str:
    if name not in ENGINE_NAMES:
        raise GreenlmError(f"unknown engine '{name}': choose one of {', '.join(ENGINE_NAMES)}")
    return name


def check_speculative_engine(name: str, speculative: SpeculativeConfig | None) -> None:
    """Speculative decoding runs on the llama.cpp engine only; say so before anything loads."""
    if speculative is not None and name != "llamacpp":
        raise GreenlmError(
            f"speculative decoding is not supported by the {name} engine (only llamacpp drafts and verifies "
            "tokens): add --engine llamacpp or drop --speculative"
        )
