"""Remove whole decoder layers, the ones that change the hidden state least (ShortGPT, Men et al., 2024).

Every removed layer is work the model no longer does on each token, so this step is `real`. The result is
a plain Llama config with fewer layers: transformers and the GGUF exporter read it as any other model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from greenlm.compress.base import CompressContext, StepConfig, StepReport, parameter_count, register
from greenlm.data.calibration import block_influence, decoder_layers
from greenlm.errors import GreenlmError


@dataclass
class DropLayers(StepConfig):
    """Remove `count` decoder layers ranked by block influence, or exactly the `layers` given (0-based)."""

    method = "drop_layers"
    count: int | None = None
    layers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if (self.count is None) == (self.layers is None):
            raise GreenlmError(
                "drop_layers needs either 'count' (layers to remove) or 'layers' (which ones), not both"
            )
        if self.count is not None and (
            isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1
        ):
            raise GreenlmError(f"drop_layers count must be a whole number >= 1, got {self.count!r}")
        if self.layers is not None:
            if isinstance(self.layers, (str, int)) or not all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in self.layers
            ):
                raise GreenlmError(
                    f"drop_layers layers must be a list of layer indices >= 0, got {self.layers!r}"
                )
            if not self.layers or len(set(self.layers)) != len(self.layers):
                raise GreenlmError(
                    f"drop_layers layers must be a non-empty list without repeats, got {list(self.layers)}"
                )
            self.layers = tuple(self.layers)


def lowest_influence(scores: list[float], count: int) -> list[int]:
    """Indices of the `count` layers with the smallest block influence, ascending by index."""
    order = sorted(range(len(scores)), key=lambda i: (scores[i], i))
    return sorted(order[:count])


def remove_layers(model, indices) -> None:
    """Delete decoder layers in place and renumber the rest so the KV cache lines up again."""
    layers = decoder_layers(model)
    total = len(layers)
    drop = set(indices)
    if any(i >= total for i in drop):
        raise GreenlmError(
            f"layer index {max(drop)} is out of range: the model has {total} layers (0..{total - 1})"
        )
    if len(drop) >= total:
        raise GreenlmError(f"cannot remove {len(drop)} of {total} decoder layers: at least one must remain")
    kept = torch.nn.ModuleList([layer for i, layer in enumerate(layers) if i not in drop])
    for new_index, layer in enumerate(kept):
        attn = getattr(layer, "self_attn", None)
        if attn is not None and hasattr(attn, "layer_idx"):
            attn.layer_idx = new_index  # the KV cache is indexed by it
        if hasattr(layer, "layer_idx"):
            layer.layer_idx = new_index
    model.model.layers = kept
    config = model.config
    config.num_hidden_layers = len(kept)
    if isinstance(getattr(config, "layer_types", None), list):  # per-layer attention kinds in newer configs
        config.layer_types = [t for i, t in enumerate(config.layer_types) if i not in drop]


@register(DropLayers)
def apply_drop_layers(model, config: DropLayers, ctx: CompressContext) -> StepReport:
    total = len(decoder_layers(model))
    if config.count is not None and config.count >= total:
        raise GreenlmError(
            f"cannot drop {config.count} of {total} decoder layers: choose a count below {total}"
        )
    before = parameter_count(model)
    details: dict = {"layers_before": total}
    if config.layers is not None:
        chosen = sorted(config.layers)
        details["ranking"] = "given"
    else:
        scores = block_influence(
            model,
            ctx.calibration_windows(),
            progress=ctx.progress,
        )
        chosen = lowest_influence(scores, config.count)
        details["ranking"] = "block influence (1 - cos(input, output)) on calibration text"
        details["block_influence"] = [round(s, 6) for s in scores]
        details["calibration_tokens"] = int(ctx.calibration_windows().numel())
    remove_layers(model, chosen)
    details.update(
        layers_removed=chosen,
        layers_after=len(decoder_layers(model)),
        params_before=before,
        params_after=parameter_count(model),
    )
    return StepReport(config.method, "real", details=details)
