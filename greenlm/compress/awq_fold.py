"""AWQ with its scales folded into the model, as the original method does (Lin et al., 2023): every layer that
reads the same input shares one per-input-channel scale s, its weights are multiplied by s, and 1/s goes into
whatever produced that input:

| layers reading one input          | 1/s folded into                                              |
|-----------------------------------|--------------------------------------------------------------|
| q, k, v (or fused qkv)            | the attention's input norm (Gemma's (1 + w) form kept)       |
| gate, up (or fused gate_up)       | the MLP's input norm                                         |
| down                              | the rows of up (the second half of a fused gate_up)           |
| o                                 | the rows of v, when v and o are the same width (no GQA); else o is not scaled |

The model computes the same function before rounding, and no layer needs a per-input-channel scale at run
time: its codes are plain grid codes, so a GGUF block format (Q4_0, ...) holds them as they are. Dividing a
row by a constant does not change how that row rounds on a per-row grid, so the folds into v and up cost
nothing. Scales are searched per shared input, on the summed output error of every quantized layer reading it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from greenlm.compress.quant_math import awq_scales, awq_weight, output_error
from greenlm.data.calibration import LinearInputStats
from greenlm.errors import GreenlmError
from greenlm.kernels.quant_grid import GgufGrid


@dataclass
class FoldGroup:
    """Linears that read one input, and where that input's scale is folded."""

    members: list[str]  # module names (relative to the decoder layer)
    into: str  # a norm module, or a linear whose rows produce the input
    rows: slice | None = None  # for a linear target: which of its rows


def _has(layer, name: str) -> bool:
    try:
        layer.get_submodule(name)
        return True
    except AttributeError:
        return False


def fold_groups(layer) -> list[FoldGroup]:
    """The fold groups of one Llama-style decoder layer (Llama, Mistral, Qwen, Gemma, Phi-3 layouts)."""
    if not _has(layer, "input_layernorm"):
        raise GreenlmError("awq fold: true needs decoder layers with an input_layernorm (Llama-style models)")
    mlp_norm = (
        "pre_feedforward_layernorm"
        if _has(layer, "pre_feedforward_layernorm")
        else "post_attention_layernorm"
    )
    groups = []
    if _has(layer, "self_attn.qkv_proj"):
        groups.append(FoldGroup(["self_attn.qkv_proj"], "input_layernorm"))
        qkv, o = layer.get_submodule("self_attn.qkv_proj"), layer.get_submodule("self_attn.o_proj")
        width = o.in_features
        if qkv.out_features == 3 * width:  # as many kv heads as query heads: v's rows feed o one to one
            groups.append(FoldGroup(["self_attn.o_proj"], "self_attn.qkv_proj", slice(2 * width, 3 * width)))
    else:
        groups.append(
            FoldGroup(["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], "input_layernorm")
        )
        v, o = layer.get_submodule("self_attn.v_proj"), layer.get_submodule("self_attn.o_proj")
        if v.out_features == o.in_features:
            groups.append(FoldGroup(["self_attn.o_proj"], "self_attn.v_proj"))
    if _has(layer, "mlp.gate_up_proj"):
        groups.append(FoldGroup(["mlp.gate_up_proj"], mlp_norm))
        half = layer.get_submodule("mlp.down_proj").in_features
        groups.append(FoldGroup(["mlp.down_proj"], "mlp.gate_up_proj", slice(half, 2 * half)))
    else:
        groups.append(FoldGroup(["mlp.gate_proj", "mlp.up_proj"], mlp_norm))
        groups.append(FoldGroup(["mlp.down_proj"], "mlp.up_proj"))
    for name in (g for group in groups for g in group.members):
        if not isinstance(layer.get_submodule(name), torch.nn.Linear):
            raise GreenlmError(f"awq fold: {name} is not a dense linear layer")
    return groups


def search_shared_scale(
    weights: list[torch.Tensor],
    stats: LinearInputStats,
    *,
    bits: int,
    group_size: int | None,
    symmetric: bool,
    grid: int,
    gguf: GgufGrid | None,
) -> tuple[torch.Tensor, float, float, float]:
    """(scale s, alpha, output error with s, output error without) for layers sharing one input."""
    best = None
    unscaled = 0.0
    for step in range(grid):
        alpha = step / grid
        s = awq_scales(stats.mean_abs, alpha) if step else torch.ones(stats.mean_abs.shape[0])
        err = 0.0
        for w in weights:
            _q, equivalent = awq_weight(w, s, bits, group_size, symmetric, gguf, stats.hessian)
            err += output_error(w, equivalent, stats.hessian)
        if step == 0:
            unscaled = err
        if best is None or err < best[2]:
            best = (s, alpha, err)
    assert best is not None
    return best[0], best[1], best[2], unscaled


def norm_offset(model) -> float:
    """Gemma's RMSNorm multiplies by (1 + w), the others by w."""
    return 1.0 if str(getattr(model.config, "model_type", "")).startswith("gemma") else 0.0


@torch.no_grad()
def fold_scale(layer, group: FoldGroup, s: torch.Tensor, offset: float) -> None:
    """Multiply the group's input columns by s and divide what produces that input by s."""
    for name in group.members:
        linear = layer.get_submodule(name)
        linear.weight.mul_(s[None, :].to(linear.weight.dtype))
    target = layer.get_submodule(group.into)
    if isinstance(target, torch.nn.Linear):
        rows = group.rows or slice(0, target.out_features)
        target.weight[rows] /= s[:, None].to(target.weight.dtype)
        if target.bias is not None:
            target.bias[rows] /= s.to(target.bias.dtype)
    else:  # an RMSNorm: out = norm(x) * (offset + w)
        weight = target.weight
        weight.copy_(((offset + weight.float()) / s - offset).to(weight.dtype))
