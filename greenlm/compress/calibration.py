"""One calibration-capture helper for every activation-aware method (GPTQ, AWQ, Wanda, block influence).

Calibration text is the calibration side of the deterministic split: evaluation text never reaches here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from greenlm.data import load_text, split_text
from greenlm.errors import GreenlmError


def calibration_windows(tokenizer, text: str | None, *, samples: int = 64, tokens: int = 256) -> torch.Tensor:
    """`samples` windows of `tokens` token ids, evenly spaced through the calibration split."""
    if samples < 1 or tokens < 2:
        raise GreenlmError(f"calibration needs at least 1 sample of 2 tokens, got {samples} x {tokens}")
    split = split_text(load_text(text))
    ids = tokenizer(split.text("calibration"), add_special_tokens=False)["input_ids"]
    if len(ids) < samples * tokens:
        raise GreenlmError(
            f"calibration text has {len(ids)} tokens, fewer than {samples} samples x {tokens} tokens: "
            "give more text or fewer/shorter calibration samples"
        )
    stride = (len(ids) - tokens) // samples
    return torch.tensor([ids[i * stride : i * stride + tokens] for i in range(samples)], dtype=torch.long)


@dataclass
class LinearInputStats:
    """Statistics of the inputs a linear layer saw, accumulated over every calibration token."""

    rows: int  # tokens seen
    sq_sum: torch.Tensor  # [in] sum of x^2 per input channel (Wanda's ||X_j||^2)
    abs_sum: torch.Tensor  # [in] sum of |x| per input channel (AWQ's activation scale)
    hessian: torch.Tensor | None  # [in, in] sum of x x^T (GPTQ), when asked for

    @property
    def mean_abs(self) -> torch.Tensor:
        return self.abs_sum / max(self.rows, 1)

    @property
    def col_norm(self) -> torch.Tensor:
        return self.sq_sum.sqrt()


def _accumulate(stats: dict[str, LinearInputStats], name: str, x: torch.Tensor, hessian: bool) -> None:
    x = x.detach().reshape(-1, x.shape[-1]).float()
    entry = stats.get(name)
    if entry is None:
        n = x.shape[-1]
        entry = stats[name] = LinearInputStats(
            0, torch.zeros(n), torch.zeros(n), torch.zeros(n, n) if hessian else None
        )
    entry.rows += x.shape[0]
    entry.sq_sum += (x * x).sum(0)
    entry.abs_sum += x.abs().sum(0)
    if entry.hessian is not None:
        entry.hessian += x.T @ x


def capture_linear_inputs(
    model,
    module_names: Iterable[str],
    windows: torch.Tensor,
    *,
    hessian: bool = False,
    batch_size: int = 8,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, LinearInputStats]:
    """Run `windows` through `model` once, recording input statistics of the named modules."""
    modules = dict(model.named_modules())
    stats: dict[str, LinearInputStats] = {}
    handles = []
    for name in module_names:
        if name not in modules:
            raise GreenlmError(f"no module named '{name}' in the model")
        handles.append(
            modules[name].register_forward_hook(
                lambda _m, args, _out, name=name: _accumulate(stats, name, args[0], hessian)
            )
        )
    try:
        with torch.inference_mode():
            total = windows.shape[0]
            for start in range(0, total, batch_size):
                model(input_ids=windows[start : start + batch_size].to(model.device), use_cache=False)
                if progress:
                    progress(min(start + batch_size, total), total)
    finally:
        for h in handles:
            h.remove()
    return stats


def decoder_layers(model) -> torch.nn.ModuleList:
    """The decoder block list of a causal LM (Llama family and look-alikes)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise GreenlmError(f"{type(model).__name__} has no model.layers decoder list: this method supports Llama-style models")
    return layers


def linear_names(model, *, skip: Iterable[str] = ()) -> list[str]:
    """Names of every nn.Linear in the model, minus those matching a skip pattern (fnmatch)."""
    from fnmatch import fnmatch

    patterns = list(skip)
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and not any(fnmatch(name, p) for p in patterns)
    ]
