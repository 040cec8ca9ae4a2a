"""`create_engine("llamacpp", spec)`: load a model on the engine of that name; `open_stepper(engine, ...)`: the
stepper (serving's step-level batching) for a loaded engine."""

from __future__ import annotations

import torch

from greenlm.engines.base import Engine
from greenlm.engines.llamacpp_engine import LlamaCppEngine
from greenlm.engines.llamacpp_stepper import LlamaCppStepper
from greenlm.engines.names import check_device, check_engine_name, check_speculative_engine
from greenlm.engines.speculative import SpeculativeConfig
from greenlm.engines.stepper import Stepper
from greenlm.engines.transformers_engine import TransformersEngine
from greenlm.engines.transformers_stepper import TransformersStepper
from greenlm.errors import GreenlmError
from greenlm.llamacpp.runtime import llama_cpp_status
from greenlm.models.spec import ModelSpec


def device_kind_for(engine: str, device: str) -> str:
    """What `device` means for `engine` on this machine, without loading a model: "cpu", "cuda" (torch) or
    "gpu" (llama.cpp offload). Cache keys use it so an `auto` run and an explicit one share their entries."""
    check_device(device)
    if device == "cpu":
        return "cpu"
    if engine == "llamacpp":
        offload = llama_cpp_status().get("gpu_offload", False)
        return "gpu" if offload or device != "auto" else "cpu"
    return "cuda" if device != "auto" or torch.cuda.is_available() else "cpu"


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
    check_engine_name(name)
    check_speculative_engine(name, speculative)
    if name == "transformers":
        return TransformersEngine.load(spec, threads=threads, device=device, dtype=dtype)
    return LlamaCppEngine.load(spec, threads=threads, device=device, dtype=dtype, speculative=speculative)


STEPPERS: dict[str, type[Stepper]] = {"llamacpp": LlamaCppStepper, "transformers": TransformersStepper}


def open_stepper(
    engine: Engine, *, slots: int, step_tokens: int, context_tokens: int | None = None
) -> Stepper:
    """The stepper for `engine`: `slots` sequences of at most `context_tokens` each (default: the engine's)."""
    kind = STEPPERS.get(engine.name)
    if kind is None:
        raise GreenlmError(f"the {engine.name} engine cannot serve (no step-level batching)")
    return kind(engine, slots=slots, step_tokens=step_tokens, context_tokens=context_tokens)
