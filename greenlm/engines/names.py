"""Engine names and the checks configs run on them: light (no torch), so `--engine` is validated before
anything loads. `engines.factory.create_engine` loads a model on one."""

from __future__ import annotations

from greenlm.engines.speculative import SpeculativeConfig
from greenlm.errors import GreenlmError

ENGINE_NAMES = ("transformers", "llamacpp")
DEFAULT_ENGINE = "transformers"  # for a model saved without run settings (see engines/saved.py)


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


DEVICES = "auto, cpu, cuda or cuda:N"


def check_device(device: str) -> str:
    """A device flag's form, checked before anything loads (whether this machine has it is the engine's call).
    auto: a GPU when the engine can use one here (transformers: torch sees CUDA; llama.cpp: its build
    offloads), else the CPU."""
    ok = isinstance(device, str) and (
        device in ("auto", "cpu", "cuda", "gpu") or (device.startswith("cuda:") and device[5:].isdigit())
    )
    if not ok:
        raise GreenlmError(f"unknown device {device!r}: use {DEVICES}")
    return device
