"""The integer codes a model carries that can go into a GGUF file as they are.

Two places hold them: greenlm's low-bit modules (a `real` quantized variant) and, for layers a quantization step
left as dense floats (`simulated`), the variant's codes file (`models.variant.CODES_FILE`). A layer's codes are
used only when they are on a GGUF format's grid (`kernels.quant_grid.GgufGrid`) and still describe the model's weights
bit for bit: a later step that changed the layer (pruning after quantizing) or AWQ's per-input-channel scales
make them stale, and such a layer is written as its float weights for llama.cpp to quantize, with a note.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import gguf
import numpy as np
import torch

from greenlm.kernels.base import QuantizedModule
from greenlm.kernels.quant_grid import GgufGrid, QuantizedWeight, gguf_grid_for
from greenlm.llamacpp.blocks import QTYPES, dequantize_blocks, pack_blocks
from greenlm.llamacpp.gguf_writer import Blocks, TensorPlan
from greenlm.models.manifest import is_variant_dir, read_manifest
from greenlm.models.variant import load_codes


@dataclass
class CodedLayer:
    weight: QuantizedWeight
    grid: GgufGrid
    origin: str  # "low-bit module" or "codes file"


@dataclass
class ModelCodes:
    layers: dict[str, CodedLayer] = field(default_factory=dict)  # Hugging Face module name -> codes
    notes: list[str] = field(default_factory=list)  # layers whose codes cannot be written, and why
    method: str | None = None  # the recipe step that made them (gptq, awq, rtn)

    @property
    def formats(self) -> dict[str, int]:
        """format name -> weights held in it."""
        counts: dict[str, int] = {}
        for layer in self.layers.values():
            counts[layer.grid.name] = counts.get(layer.grid.name, 0) + layer.weight.q.numel()
        return counts

    @property
    def main_format(self) -> str | None:
        formats = self.formats
        return max(formats, key=formats.get) if formats else None


def declared_format(spec) -> str | None:
    """The GGUF format a variant's quantization steps chose, from its manifest alone (None if none did)."""
    if spec.kind != "variant" or not is_variant_dir(spec.path):
        return None
    formats = [
        (step.get("details") or {}).get("gguf_format")
        for step in read_manifest(spec.path).steps
        if isinstance(step, dict)
    ]
    formats = [f for f in formats if f]
    return formats[-1] if formats else None


def _grid_of(weight: QuantizedWeight) -> tuple[GgufGrid | None, str | None]:
    grid = gguf_grid_for(weight.bits, weight.group_size, weight.symmetric)
    if grid is None:
        return None, (
            f"{weight.bits}-bit, groups of {weight.group_size}, "
            f"{'symmetric' if weight.symmetric else 'asymmetric'}: no GGUF block format has that shape"
        )
    return grid, weight.gguf_mismatch(grid)


def _method(spec) -> str | None:
    steps = read_manifest(spec.path).steps
    methods = [
        s.get("method") for s in steps if isinstance(s, dict) and (s.get("details") or {}).get("gguf_format")
    ]
    return methods[-1] if methods else None


def collect_codes(spec, model) -> ModelCodes:
    """Every layer of `model` (loaded from `spec`) whose codes can be written as GGUF blocks without rounding."""
    found = ModelCodes()
    if spec.kind != "variant":
        return found
    found.method = _method(spec)
    skipped: dict[str, list[str]] = {}
    modules = dict(model.named_modules())
    for name, module in modules.items():
        if not isinstance(module, QuantizedModule):
            continue
        if getattr(module, "input_scale", None) is not None:
            skipped.setdefault(
                "per-input-channel (AWQ) scales, which no GGUF block holds (quantize with awq fold: true)", []
            ).append(name)
            continue
        weight = module.quantized_weight()
        grid, why = _grid_of(weight)
        if why:
            skipped.setdefault(why, []).append(name)
        else:
            found.layers[name] = CodedLayer(weight, grid, "low-bit module")
    for name, weight in load_codes(spec.path).items():
        module = modules.get(name)
        if not isinstance(module, torch.nn.Linear) or tuple(module.weight.shape) != weight.shape:
            skipped.setdefault("the layer changed shape after it was quantized", []).append(name)
            continue
        if not torch.equal(weight.dequantize(), module.weight.detach().float()):
            skipped.setdefault("the layer's weights changed after it was quantized", []).append(name)
            continue
        grid, why = _grid_of(weight)
        if why:
            skipped.setdefault(why, []).append(name)
        else:
            found.layers[name] = CodedLayer(weight, grid, "codes file")
    for why, names in skipped.items():
        found.notes.append(
            f"{len(names)} quantized layers (e.g. {names[0]}) are written as float weights for llama.cpp to "
            f"quantize, not as their own codes: {why}"
        )
    return found


def coded_blocks(codes: ModelCodes, plans: list[TensorPlan], source: str) -> dict[str, Blocks]:
    """GGUF tensor name -> greenlm's blocks, rows in the file's order (Llama's q/k permutation applied)."""
    by_hf = {p.hf_name: p for p in plans}
    blocks = {}
    for name, layer in codes.layers.items():
        plan = by_hf.get(f"{name}.weight")
        if plan is None:  # a tied output head that the file does not hold separately
            continue
        data = pack_blocks(layer.weight, layer.grid)
        if plan.row_order is not None:
            data = data[plan.row_order]
        blocks[plan.gguf_name] = Blocks(data, QTYPES[layer.grid.name], source)
    return blocks


def copied_blocks(path, names: set[str]) -> dict[str, Blocks]:
    """Tensors `names` of GGUF file `path` (one llama.cpp quantized) as they are stored there."""
    reader = gguf.GGUFReader(str(path))
    blocks = {}
    for tensor in reader.tensors:
        if tensor.name not in names:
            continue
        data = np.array(tensor.data)
        if data.ndim == 1:  # norms and biases: the writer keeps them as float32 itself
            continue
        blocks[tensor.name] = Blocks(data, tensor.tensor_type, f"llama.cpp {tensor.tensor_type.name.lower()}")
    return blocks


def verify_blocks(path, plans: list[TensorPlan], names: set[str]) -> dict:
    """Read `names` back from the written file and compare with the model's own weights, value by value."""
    reader = gguf.GGUFReader(str(path))
    by_name = {p.gguf_name: p for p in plans}
    exact, worst = 0, 0.0
    for tensor in reader.tensors:
        if tensor.name not in names:
            continue
        back = dequantize_blocks(np.array(tensor.data), tensor.tensor_type)
        diff = float(np.abs(back - by_name[tensor.name].data).max())
        worst = max(worst, diff)
        exact += diff == 0.0
    return {
        "tensors_checked": len(names),
        "bit_exact": exact,
        "max_abs_diff": worst,
        "summary": (
            f"all {len(names)} coded weight matrices read back from the file equal the model's weights bit for bit"
            if exact == len(names)
            else f"{len(names) - exact} of {len(names)} coded matrices differ from the model's weights (max {worst:.3g})"
        ),
    }
