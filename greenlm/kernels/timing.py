"""Timing quantized kernels against float on a model's linear layers, the way one decode step uses them.

A timed block runs every layer of one shape once, each with its own weights, as one decode step does: the
working set is the model's, not one matrix that sits in cache, so memory traffic (what low-bit weights save)
counts as it does in real decoding. Rounds interleave float and each kernel on each shape, so all paths see
the same machine. Other processes' load only ever adds time, so a path's cost is its fastest block over the
rounds, and speed-ups are ratios of those.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from greenlm.errors import GreenlmError
from greenlm.kernels.linear import KERNELS
from greenlm.kernels.quant_grid import rtn

Shape = tuple[int, int]  # (in_features, out_features)
Stack = dict[Shape, list[torch.nn.Module]]  # every layer of the model by shape
FLOAT = "float"


@dataclass
class ShapeTiming:
    in_features: int
    out_features: int
    count: int  # layers of this shape
    float_s: float  # seconds for one call of each such layer, float nn.Linear (fastest block)
    kernel_s: float  # the same on the kernel
    speedup: float  # float_s / kernel_s (>1: the kernel is faster)

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 9) if isinstance(v, float) else v) for k, v in asdict(self).items()}


@dataclass
class KernelTiming:
    kernel: str
    speedup: float  # time of all the layers at float / on the kernel (>1: faster); nan if it cannot run
    shapes: list[ShapeTiming]
    tokens: int  # tokens per call (1: batch-1 decode)
    rounds: int
    error: str | None = None  # why it cannot run, if it cannot

    def to_dict(self) -> dict[str, Any]:
        return {
            "kernel": self.kernel,
            "speedup": None if math.isnan(self.speedup) else round(self.speedup, 4),
            "tokens": self.tokens,
            "rounds": self.rounds,
            "error": self.error,
            "shapes": [s.to_dict() for s in self.shapes],
        }


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def time_stacks(
    stacks: dict[str, Stack], *, tokens: int = 1, rounds: int = 20, dtype: torch.dtype = torch.float32
) -> list[KernelTiming]:
    """Time every path in `stacks` (which must hold `"float"`, the baseline) on the same inputs."""
    if FLOAT not in stacks:
        raise ValueError("time_stacks needs a 'float' baseline stack")
    shapes = {shape: len(mods) for shape, mods in stacks[FLOAT].items()}
    gen = torch.Generator().manual_seed(0)
    inputs = {shape: torch.randn(tokens, shape[0], generator=gen).to(dtype) for shape in shapes}
    errors: dict[str, str] = {}
    paths: dict[str, Stack] = {}
    with torch.inference_mode():
        for name, stack in stacks.items():
            try:
                for shape, mods in stack.items():
                    for m in mods:  # first call builds kernel layouts (and compiles, if compiled)
                        m(inputs[shape])
                paths[name] = stack
            except Exception as exc:  # an op missing from this build, or a shape it cannot take
                if name == FLOAT:
                    raise
                errors[name] = _first_line(exc)
        best = {p: dict.fromkeys(shapes, math.inf) for p in paths}
        for _round in range(rounds):
            for shape in shapes:
                x = inputs[shape]
                for path, stack in paths.items():
                    start = time.perf_counter()
                    for m in stack[shape]:
                        m(x)
                    best[path][shape] = min(best[path][shape], time.perf_counter() - start)

    float_total = sum(best[FLOAT].values())
    results = []
    for name in stacks:
        if name == FLOAT:
            continue
        if name in errors:
            results.append(KernelTiming(name, math.nan, [], tokens, rounds, errors[name]))
            continue
        per_shape = [
            ShapeTiming(
                shape[0],
                shape[1],
                count,
                best[FLOAT][shape],
                best[name][shape],
                best[FLOAT][shape] / best[name][shape],
            )
            for shape, count in shapes.items()
        ]
        results.append(KernelTiming(name, float_total / sum(best[name].values()), per_shape, tokens, rounds))
    return results


def random_stacks(
    kernels: list[str],
    shapes: dict[Shape, int],
    *,
    bits: int,
    group_size: int | None,
    symmetric: bool,
    dtype: torch.dtype = torch.float32,
) -> tuple[dict[str, Stack], dict[str, str]]:
    """Float layers and kernel layers with random weights, `count` of each shape; and the kernels that
    cannot take these settings, with why. Kernel speed does not depend on the weights' values."""
    gen = torch.Generator().manual_seed(0)
    weights = {
        shape: [torch.randn(shape[1], shape[0], generator=gen) * 0.05 for _ in range(count)]
        for shape, count in shapes.items()
    }
    stacks: dict[str, Stack] = {FLOAT: {}}
    for shape, ws in weights.items():
        layers = []
        for w in ws:
            lin = torch.nn.utils.skip_init(torch.nn.Linear, *shape, bias=False, dtype=dtype)  # no random init
            with torch.no_grad():
                lin.weight.copy_(w)
            layers.append(lin)
        stacks[FLOAT][shape] = layers
    skipped: dict[str, str] = {}
    quantized: dict[Shape, list] | None = None  # shared by every kernel: build() copies what it keeps
    for name in kernels:
        kernel = KERNELS[name]
        try:
            for shape in shapes:
                reason = kernel.check(bits, group_size, symmetric, shape[0])
                if reason:
                    raise GreenlmError(reason)
            if quantized is None:
                quantized = {
                    shape: [rtn(w, bits, group_size, symmetric) for w in ws] for shape, ws in weights.items()
                }
            stacks[name] = {shape: [kernel.build(q) for q in qs] for shape, qs in quantized.items()}
        except Exception as exc:
            skipped[name] = _first_line(exc)
    return stacks, skipped


def time_kernels(
    kernels: list[str],
    shapes: dict[Shape, int],
    *,
    bits: int,
    group_size: int | None,
    symmetric: bool,
    tokens: int = 1,
    rounds: int = 20,
    dtype: torch.dtype = torch.float32,
) -> list[KernelTiming]:
    """Each kernel against float on `shapes` ({(in, out): layer count}), random weights."""
    stacks, skipped = random_stacks(
        kernels, shapes, bits=bits, group_size=group_size, symmetric=symmetric, dtype=dtype
    )
    timings = {t.kernel: t for t in time_stacks(stacks, tokens=tokens, rounds=rounds, dtype=dtype)}
    return [
        timings.get(name) or KernelTiming(name, math.nan, [], tokens, rounds, skipped.get(name))
        for name in kernels
    ]
