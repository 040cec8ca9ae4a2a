"""Peak resident memory of this process over a window, not since start-up (a GGUF dequantize peaks higher)."""

from __future__ import annotations

import resource
from pathlib import Path

import torch

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark (Linux >= 4.0: write 5 to clear_refs). False where unsupported."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB → MB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports kB


def reset_peak_gpu(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)


def peak_gpu_mb(device: str) -> float | None:
    """Peak memory torch allocated on the GPU over the window; None on CPU."""
    if not device.startswith("cuda"):
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20
