"""bf16 autocast where the device runs bf16 natively, float32 elsewhere.

On a CPU without bf16 instructions, autocast would emulate bf16 and run slower than float32; with AMX or
AVX512-BF16 (Sapphire Rapids and later, Zen 4) it is several times faster. Weights, optimizer state and the
loss stay float32 either way (mixed precision): only the matrix products run in bf16.
"""

from __future__ import annotations

import contextlib

import torch

from greenlm.errors import GreenlmError
from greenlm.train.settings import PRECISIONS


def native_bf16(device: torch.device) -> tuple[bool, str]:
    """Whether `device` runs bf16 matrix products natively, and how we know."""
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
        return ok, f"CUDA device {'supports' if ok else 'lacks'} bf16"
    if device.type == "cpu":
        checks = (
            ("AMX", getattr(torch.cpu, "_is_amx_tile_supported", None)),
            ("AVX512-BF16", getattr(torch.cpu, "_is_avx512_bf16_supported", None)),
        )
        for name, check in checks:
            if check is not None and check():
                return True, f"CPU has {name}"
        return False, "CPU has no AMX or AVX512-BF16 (bf16 would be emulated, slower than float32)"
    return False, f"device {device.type}: no bf16 autocast"


def resolve_precision(precision: str, device: torch.device) -> tuple[str, str]:
    """("bf16" | "fp32", the reason) for a requested precision."""
    if precision not in PRECISIONS:
        raise GreenlmError(f"unknown precision '{precision}': choose one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return "fp32", "float32, as requested"
    ok, why = native_bf16(device)
    if precision == "bf16":
        if device.type not in ("cpu", "cuda"):
            raise GreenlmError(f"--precision bf16 is not available on {device.type}: use fp32")
        return "bf16", f"bf16 autocast, as requested ({why})"
    return ("bf16", f"bf16 autocast: {why}") if ok else ("fp32", f"float32: {why}")


def autocast(precision: str, device: torch.device):
    """The autocast context for a resolved precision ("bf16" or "fp32")."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
