"""Which execution engines this installation can run, their versions, and why not when one cannot."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import torch

from greenlm.llamacpp.cache import check_convertible
from greenlm.llamacpp.inspect import tensor_type_counts
from greenlm.llamacpp.runtime import import_llama_cpp, llama_cpp_status


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _transformers() -> dict:
    info = {"engine": "transformers", "package": "transformers", "version": _version("transformers")}
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return dict(
        info,
        installed=True,
        usable=True,
        reason=None,
        detail=f"torch {torch.__version__}, devices: {', '.join(devices)}, {torch.get_num_threads()} threads",
    )


def _llamacpp() -> dict:
    info = {"engine": "llamacpp", "package": "llama-cpp-python", "version": _version("llama-cpp-python")}
    status = llama_cpp_status()
    if not status["usable"]:
        return dict(info, installed=info["version"] is not None, usable=False, reason=status["reason"])
    # "CPU : SSE3 = 1 | AVX2 = 1 | ..." → the features llama.cpp was built with and found
    features = [
        p.split("=")[0].strip() for p in status["system_info"].split("|") if p.strip().endswith("= 1")
    ]
    features = [f.split(":")[-1].strip() for f in features]
    offload = "GPU offload" if status["gpu_offload"] else "CPU only"
    return dict(
        info,
        installed=True,
        usable=True,
        reason=None,
        detail=f"{offload}; {', '.join(features)}",
        system_info=status["system_info"],
    )


def available_engines() -> list[dict]:
    """One entry per engine: engine, package, version, installed, usable, reason (why not), detail."""
    return [_transformers(), _llamacpp()]


def check_engine_ready(name: str, spec) -> None:
    """Fail in a moment, not after minutes of other work, when engine `name` cannot run `spec`: llama.cpp
    missing, a GGUF it could not read (truncated, damaged), or a model it would have to export and cannot."""
    if name != "llamacpp":
        return
    import_llama_cpp()
    if spec.is_gguf:
        tensor_type_counts(spec.path)  # reads every tensor's header: a damaged file fails here
    else:
        check_convertible(spec)
