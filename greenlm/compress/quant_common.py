"""What every weight-quantization step shares: its settings, the layers it touches, and how the result is
installed in the model: on a low-bit kernel that measurably beats float32 here (`real`), or as dequantized
float weights (`simulated`, quality only).

Kernel choice (`kernel: auto`) is decided by measurement at compress time, not by a table: every weight-only
kernel that can run the configured weights is timed against float32 on this model's own linear shapes at
batch-1 decode (one token per call), interleaved over several rounds, and the fastest is used when it is at
least `REAL_MIN_SPEEDUP` times as fast as float32 over all quantized layers together. `auto` never picks a
kernel that also quantizes activations (`int8_dynamic_*`, `int4_dynamic`): those change the model beyond
its weights and must be asked for by name.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from greenlm.compress.base import CompressContext, StepConfig, StepReport
from greenlm.data.calibration import LinearInputStats, capture_linear_inputs, linear_names
from greenlm.data.calibration import sequential_linear_inputs as _sequential
from greenlm.errors import GreenlmError
from greenlm.kernels.linear import DENSE, KERNEL_CHOICES, KERNELS, available_kernels
from greenlm.kernels.quant_grid import BITS, GGUF_GRIDS, GgufGrid, QuantizedWeight, gguf_grid_for
from greenlm.kernels.timing import FLOAT, KernelTiming, Stack, time_stacks
from greenlm.progress import ProgressEvent, relabel

DEFAULT_SKIP = ("lm_head",)
GGUF_CHOICES = ("auto", "off", *GGUF_GRIDS)  # SmolLM2 and most small models tie it to the input embedding
# A kernel counts as faster only beyond timing noise: repeated timings on a shared 2-core machine still
# wander by a few percent between runs.
REAL_MIN_SPEEDUP = 1.05
TIMING_ROUNDS = 20


def check_bits(bits) -> int:
    if isinstance(bits, bool) or bits not in BITS:
        raise GreenlmError(f"bits must be one of {', '.join(map(str, BITS))}, got {bits!r}")
    return bits


def check_group_size(group_size) -> int | None:
    if group_size is None:
        return None
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise GreenlmError(
            f"group_size must be a whole number >= 1, or null for one scale per output channel, got {group_size!r}"
        )
    return group_size


def check_skip(skip) -> tuple[str, ...]:
    if (
        isinstance(skip, str)
        or not isinstance(skip, (list, tuple))
        or not all(isinstance(p, str) for p in skip)
    ):
        raise GreenlmError(f"skip must be a list of module-name patterns (fnmatch), got {skip!r}")
    return tuple(skip)


def check_gguf(gguf, bits: int, group_size: int | None, symmetric: bool) -> GgufGrid | None:
    """The GGUF block format the step's grid follows (None: greenlm's own float32-scale grid)."""
    if gguf not in GGUF_CHOICES:
        raise GreenlmError(f"unknown gguf {gguf!r}: choose one of {', '.join(map(str, GGUF_CHOICES))}")
    if gguf == "off":
        return None
    if gguf == "auto":
        return gguf_grid_for(bits, group_size, symmetric)
    grid = GGUF_GRIDS[gguf]
    if (bits, group_size, symmetric) != (grid.bits, 32, grid.symmetric):
        raise GreenlmError(
            f"gguf {gguf} holds {grid.bits}-bit codes in groups of 32, symmetric={str(grid.symmetric).lower()}: "
            f"set bits: {grid.bits}, group_size: 32, symmetric: {str(grid.symmetric).lower()} (got bits={bits}, "
            f"group_size={group_size}, symmetric={str(symmetric).lower()})"
        )
    return grid


def check_kernel(kernel, bits: int, group_size: int | None, symmetric: bool) -> str:
    if kernel not in KERNEL_CHOICES:
        raise GreenlmError(f"unknown kernel {kernel!r}: choose one of {', '.join(KERNEL_CHOICES)}")
    if kernel in KERNELS:
        reason = KERNELS[kernel].check(bits, group_size, symmetric)
        if reason:
            raise GreenlmError(
                f"kernel {kernel} cannot run bits={bits}, group_size={group_size}, symmetric={symmetric}: "
                f"{reason}; or use kernel auto or dense"
            )
        if kernel not in available_kernels():
            raise GreenlmError(f"kernel {kernel} is not available in this PyTorch build")
    return kernel


@dataclass
class WeightQuantConfig(StepConfig):
    """Settings every weight quantization method has."""

    bits: int = 8
    group_size: int | None = None  # input columns sharing a scale; None: one scale per output channel
    symmetric: bool = True
    skip: tuple[str, ...] = DEFAULT_SKIP  # fnmatch patterns of linear layers left in float
    kernel: str = "auto"  # auto | dense | one of quant_kernels.KERNELS
    # The grid as a GGUF block format, so `greenlm export` writes the codes as they are: auto (when bits,
    # group size and symmetry match Q4_0/Q4_1/Q5_0/Q5_1/Q8_0), off (float32 scales), or a format by name.
    gguf: str = "auto"

    def __post_init__(self) -> None:
        check_bits(self.bits)
        check_group_size(self.group_size)
        if not isinstance(self.symmetric, bool):
            raise GreenlmError(f"symmetric must be true or false, got {self.symmetric!r}")
        self.skip = check_skip(self.skip)
        check_kernel(self.kernel, self.bits, self.group_size, self.symmetric)
        check_gguf(self.gguf, self.bits, self.group_size, self.symmetric)

    @property
    def gguf_grid(self) -> GgufGrid | None:
        return check_gguf(self.gguf, self.bits, self.group_size, self.symmetric)


@dataclass
class CalibratedQuantConfig(WeightQuantConfig):
    """A method that calibrates on text (GPTQ, AWQ): int4 with groups of 32 by default."""

    bits: int = 4
    group_size: int | None = 32


@dataclass
class Quantized:
    """One layer's result: its codes, and for AWQ the per-input-channel scale divided out of its inputs."""

    weight: QuantizedWeight
    input_scale: torch.Tensor | None = None

    def dense(self) -> torch.Tensor:
        w = self.weight.dequantize()
        return w / self.input_scale[None, :] if self.input_scale is not None else w


def quant_targets(model, config: WeightQuantConfig) -> dict[str, torch.nn.Linear]:
    """The linear layers to quantize, checked against the config before any work is done."""
    modules = dict(model.named_modules())
    names = linear_names(model, skip=config.skip)
    if not names:
        raise GreenlmError(f"no linear layers left to quantize after skip patterns {list(config.skip)}")
    targets = {n: modules[n] for n in names}
    if config.group_size is not None:
        for name, linear in targets.items():
            if linear.in_features % config.group_size:
                raise GreenlmError(
                    f"group_size {config.group_size} does not divide the in_features {linear.in_features} of "
                    f"{name}: choose a group size that divides every quantized layer's input width, or skip it"
                )
    if config.bits == 4 and config.kernel != DENSE:
        odd = [n for n, lin in targets.items() if lin.in_features % 2]
        if odd:
            raise GreenlmError(f"4-bit storage packs two weights a byte: {odd[0]} has an odd in_features")
    return targets


def untie(model, targets: dict[str, torch.nn.Linear]) -> list[str]:
    """Give target layers whose weight is shared with another parameter (a tied output head) their own
    copy, so quantizing them leaves the other one (the input embedding) in float. Returns their names."""
    counts: dict[int, int] = {}
    for _name, param in model.named_parameters(remove_duplicate=False):
        counts[id(param)] = counts.get(id(param), 0) + 1
    untied = []
    for name, linear in targets.items():
        if counts.get(id(linear.weight), 0) > 1:
            linear.weight = torch.nn.Parameter(linear.weight.detach().clone(), requires_grad=False)
            untied.append(name)
    if untied and getattr(model.config, "tie_word_embeddings", False):
        model.config.tie_word_embeddings = False
    return untied


def layer_by_layer(model, windows, skip: list[str], ctx: CompressContext):
    """(decoder layer index, statistics of its linears' inputs with Hessians), one layer at a time, each
    captured after the layers before it were quantized in place."""
    return _sequential(
        model,
        windows,
        skip=skip,
        hessian=True,
        progress=relabel(ctx.progress, "calibrating + quantizing layers"),
    )


def calibrated(
    model,
    targets: dict[str, torch.nn.Linear],
    ctx: CompressContext,
    quantize: Callable[[str, torch.nn.Linear, LinearInputStats], Quantized],
    *,
    sequential: bool,
) -> dict[str, Quantized]:
    """Quantize each target from statistics of its inputs on the calibration split. Sequentially (one
    decoder layer at a time, each seeing the already-quantized layers before it), or from one pass."""
    windows = ctx.calibration_windows()
    results: dict[str, Quantized] = {}

    def do(name: str, stats: LinearInputStats) -> None:
        linear = targets[name]
        results[name] = quantize(name, linear, stats)
        with torch.no_grad():  # later layers must see this layer's quantized outputs
            linear.weight.copy_(results[name].dense().to(linear.weight.dtype))

    if sequential:
        skip_outside = [n for n in linear_names(model) if n not in targets]
        for _index, stats in layer_by_layer(model, windows, skip_outside, ctx):
            for name in stats:
                do(name, stats[name])
    rest = [n for n in targets if n not in results]
    if rest:
        stats = capture_linear_inputs(
            model,
            rest,
            windows,
            hessian=True,
            progress=relabel(ctx.progress, "calibrating"),
        )
        for i, name in enumerate(rest, 1):
            if name not in stats:
                raise GreenlmError(f"{name} saw no input on the calibration text: add it to skip")
            do(name, stats[name])
            ctx.progress(ProgressEvent("quantizing", i, len(rest), "layers"))
    return results


def _shapes(targets: dict[str, torch.nn.Linear]) -> dict[tuple[int, int], int]:
    shapes: dict[tuple[int, int], int] = {}
    for linear in targets.values():
        key = (linear.in_features, linear.out_features)
        shapes[key] = shapes.get(key, 0) + 1
    return shapes


def _by_shape(modules: dict[str, torch.nn.Module], targets: dict[str, torch.nn.Linear]) -> Stack:
    stack: Stack = {}
    for name, module in modules.items():
        stack.setdefault((targets[name].in_features, targets[name].out_features), []).append(module)
    return stack


def _build(kernel: str, targets: dict[str, torch.nn.Linear], results: dict[str, Quantized]) -> dict[str, Any]:
    modules = {}
    for name, linear in targets.items():
        q = results[name]
        bias = linear.bias.detach() if linear.bias is not None else None
        modules[name] = KERNELS[kernel].build(q.weight, bias=bias, input_scale=q.input_scale)
    return modules


def choose_kernel(
    config: WeightQuantConfig, targets: dict[str, torch.nn.Linear], results: dict[str, Quantized]
) -> tuple[str | None, list[KernelTiming], dict[str, torch.nn.Module]]:
    """The kernel to run (None: stay dense), the timings behind the choice, and its modules.

    Candidates are built from the real quantized weights and timed against the model's own float layers."""
    if config.kernel == DENSE:
        return None, [], {}
    if config.kernel == "auto":
        candidates = [
            name
            for name in available_kernels()
            if KERNELS[name].auto
            and KERNELS[name].weight_only
            and KERNELS[name].check(config.bits, config.group_size, config.symmetric) is None
        ]
    else:
        candidates = [config.kernel]
    if not candidates:
        return None, [], {}
    built: dict[str, dict[str, Any]] = {}
    failed: dict[str, str] = {}
    for name in candidates:
        try:
            built[name] = _build(name, targets, results)
        except Exception as exc:  # a kernel this build or this weight cannot take
            failed[name] = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    stacks = {FLOAT: _by_shape(dict(targets), targets)}
    stacks.update({name: _by_shape(mods, targets) for name, mods in built.items()})
    dtype = next(iter(targets.values())).weight.dtype
    timed = {t.kernel: t for t in time_stacks(stacks, tokens=1, rounds=TIMING_ROUNDS, dtype=dtype)}
    timings = [
        timed.get(name) or KernelTiming(name, math.nan, [], 1, TIMING_ROUNDS, failed.get(name))
        for name in candidates
    ]
    ran = [t for t in timings if t.error is None]
    if config.kernel != "auto":
        if not ran:
            raise GreenlmError(f"kernel {config.kernel} cannot run on this machine: {timings[0].error}")
        return config.kernel, timings, built[config.kernel]
    best = max(ran, key=lambda t: t.speedup, default=None)
    if best is None or best.speedup < REAL_MIN_SPEEDUP:
        return None, timings, {}
    return best.kernel, timings, built[best.kernel]


def _replace(model, name: str, module: torch.nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def _storage_bytes(config: WeightQuantConfig, targets: dict[str, torch.nn.Linear]) -> int:
    """Bytes of the quantized layers as a low-bit variant stores them (codes + float32 scales and zeros)."""
    total = 0
    for linear in targets.values():
        groups = 1 if config.group_size is None else linear.in_features // config.group_size
        code_bits = 4 if config.bits == 4 else 8  # int3 codes are stored one a byte
        total += linear.weight.numel() * code_bits // 8 + 2 * 4 * linear.out_features * groups
    return total


def install(
    model,
    config: WeightQuantConfig,
    targets: dict[str, torch.nn.Linear],
    results: dict[str, Quantized],
    *,
    untied: list[str],
    details: dict[str, Any] | None = None,
) -> StepReport:
    """Put the quantized weights in the model (low-bit modules or dense floats) and say which and why."""
    kernel, timings, modules = choose_kernel(config, targets, results)
    by_name = {t.kernel: t for t in timings}
    timing = by_name.get(kernel) if kernel else None
    speedup = timing.speedup if timing else None
    real = kernel is not None and speedup is not None and speedup >= REAL_MIN_SPEEDUP
    notes: list[str] = []
    basis = (
        f"measured at compress time on this model's {len(targets)} quantized layers, each called once per "
        f"round with 1 token as in batch-1 decode, fastest of {TIMING_ROUNDS} interleaved rounds"
    )
    if kernel is None:
        with torch.no_grad():
            for name, linear in targets.items():
                linear.weight.copy_(results[name].dense().to(linear.weight.dtype))
        if config.kernel == DENSE:
            why = "kernel dense was asked for"
        elif timings:
            tried = ", ".join(
                f"{t.kernel} {t.speedup:.2f}x" if t.error is None else f"{t.kernel} (cannot run: {t.error})"
                for t in timings
            )
            why = f"no low-bit kernel beat float32 by {REAL_MIN_SPEEDUP}x here ({tried}; {basis})"
        else:
            why = f"no PyTorch kernel runs {config.bits}-bit weights with group_size={config.group_size}"
        notes.append(
            f"simulated: weights rounded to {config.bits}-bit and stored back as float ({why}); "
            "quality only: no speed, size or energy saving, and the variant loads with plain transformers"
        )
        path = DENSE
    else:
        for name, module in modules.items():
            _replace(model, name, module)
        if real:
            notes.append(
                f"real: runs on {kernel} at {speedup:.2f}x float32 speed over the quantized layers ({basis})"
            )
        else:
            notes.append(
                f"simulated: kernel {kernel} was asked for and is kept, but it runs at {speedup:.2f}x float32 "
                f"speed here ({basis}): not a saving on this machine"
            )
        if not KERNELS[kernel].weight_only:
            notes.append(
                f"{kernel} quantizes activations to int8 per token as well: quality differs from weight-only"
            )
        path = kernel
    if untied:
        notes.append(
            f"{', '.join(untied)} shared its weight with another parameter (tied embedding): it now has its own "
            "quantized copy and the other stays float"
        )
    grid = config.gguf_grid
    codes: dict[str, QuantizedWeight] = {}
    if grid is not None:
        # Codes on a GGUF format's grid: kept for `greenlm export`, which writes them as blocks. A low-bit
        # module holds its own; dense layers' codes go to the variant's codes file. AWQ's per-input-channel
        # scales are not part of any GGUF block, so those layers' codes cannot be written as they are.
        direct = [n for n, r in results.items() if r.input_scale is None]
        if kernel is None:
            codes = {n: results[n].weight for n in direct}
        if len(direct) < len(results):
            notes.append(
                f"gguf {grid.name}: {len(results) - len(direct)} layers carry per-input-channel scales, which GGUF "
                "blocks cannot hold: export writes them re-rounded by llama.cpp, the rest as their own codes "
                "(awq fold: true folds the scales into the norms instead)"
            )
    report_details = {
        "bits": config.bits,
        "group_size": config.group_size,
        "symmetric": config.symmetric,
        "layers_quantized": len(targets),
        "layers_skipped": config.skip,
        "kernel": path,
        "kernel_speedup_vs_float32": round(speedup, 4) if speedup is not None else None,
        "kernel_selection": basis if timings else None,
        "kernel_timings": [t.to_dict() for t in timings],
        "gguf_format": grid.name if grid else None,
        "quantized_weight_bytes": _storage_bytes(config, targets) if kernel else None,
        "float_weight_bytes": sum(lin.weight.numel() * lin.weight.element_size() for lin in targets.values()),
        **(details or {}),
    }
    return StepReport(
        config.method, "real" if real else "simulated", notes=notes, details=report_details, codes=codes
    )
