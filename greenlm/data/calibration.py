"""One calibration-capture helper for every activation-aware method (GPTQ, AWQ, Wanda, block influence).

Calibration text is the calibration side of the deterministic split: evaluation text never reaches here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatch

import torch

from greenlm.data.sources import load_text
from greenlm.data.split import split_text
from greenlm.errors import GreenlmError
from greenlm.progress import Progress, ProgressEvent


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


def _body_if_enough(model, module_names: Iterable[str]):
    """The decoder body (`model.model`) when every hooked module lies inside it: skipping the output head
    saves its [tokens x vocab] logits, a large share of a small model's forward pass."""
    body = getattr(model, "model", None)
    names = list(module_names)
    if (
        body is not None
        and isinstance(body, torch.nn.Module)
        and names
        and all(n.startswith("model.") for n in names)
    ):
        return body
    return model


def capture_linear_inputs(
    model,
    module_names: Iterable[str],
    windows: torch.Tensor,
    *,
    hessian: bool = False,
    batch_size: int = 8,
    progress: Progress | None = None,
) -> dict[str, LinearInputStats]:
    """Run `windows` through `model` once, recording input statistics of the named modules."""
    module_names = list(module_names)
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
    runner = _body_if_enough(model, module_names)
    try:
        with torch.inference_mode():
            total = windows.shape[0]
            for start in range(0, total, batch_size):
                runner(input_ids=windows[start : start + batch_size].to(model.device), use_cache=False)
                if progress:
                    progress(ProgressEvent("calibrating", min(start + batch_size, total), total, "windows"))
    finally:
        for h in handles:
            h.remove()
    return stats


def decoder_layers(model) -> torch.nn.ModuleList:
    """The decoder block list of a causal LM (Llama family and look-alikes)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise GreenlmError(
            f"{type(model).__name__} has no model.layers decoder list: this method supports Llama-style models"
        )
    return layers


def linear_names(model, *, skip: Iterable[str] = ()) -> list[str]:
    """Names of every nn.Linear in the model, minus those matching a skip pattern (fnmatch)."""
    patterns = list(skip)
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and not any(fnmatch(name, p) for p in patterns)
    ]


def _hidden(value) -> torch.Tensor:
    # Decoder layers return a tensor (transformers 5) or a tuple whose first item is the hidden state.
    return value[0] if isinstance(value, (tuple, list)) else value


def block_influence(
    model,
    windows: torch.Tensor,
    *,
    batch_size: int = 8,
    progress: Progress | None = None,
) -> list[float]:
    """Per decoder layer, 1 - mean cosine similarity of its input and output hidden states (ShortGPT's
    block influence) over every calibration token: a layer that barely turns the hidden state matters little."""
    layers = decoder_layers(model)
    sums = torch.zeros(len(layers), dtype=torch.float64)
    count = 0
    inputs: dict[int, torch.Tensor] = {}
    handles = []

    def before(index):
        def hook(_m, args, kwargs):
            inputs[index] = (args[0] if args else kwargs["hidden_states"]).detach()

        return hook

    def after(index):
        def hook(_m, _args, _kwargs, output):
            y = _hidden(output).detach()
            x = inputs.pop(index).reshape(-1, y.shape[-1]).float()
            y = y.reshape(x.shape).float()
            sums[index] += torch.nn.functional.cosine_similarity(x, y, dim=-1).sum().double()

        return hook

    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(before(i), with_kwargs=True))
        handles.append(layer.register_forward_hook(after(i), with_kwargs=True))
    try:
        with torch.inference_mode():
            total = windows.shape[0]
            for start in range(0, total, batch_size):
                batch = windows[start : start + batch_size]
                _body_if_enough(model, ["model.layers"])(input_ids=batch.to(model.device), use_cache=False)
                count += batch.numel()
                if progress:
                    progress(
                        ProgressEvent("block influence", min(start + batch_size, total), total, "windows")
                    )
    finally:
        for h in handles:
            h.remove()
    return (1.0 - sums / max(count, 1)).tolist()


class _StopForward(Exception):
    """Raised by a hook to end a forward pass once the inputs of the first decoder layer are known."""


def _first_layer_inputs(model, windows: torch.Tensor, batch_size: int) -> list[tuple[tuple, dict]]:
    """Per calibration batch, the (args, kwargs) the first decoder layer is called with: the embedded
    tokens plus the rotary embeddings and masks the model computed for them."""
    layers = decoder_layers(model)
    captured: list[tuple[tuple, dict]] = []

    def hook(_m, args, kwargs):
        captured.append((tuple(args), dict(kwargs)))
        raise _StopForward

    handle = layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.inference_mode():
            for start in range(0, windows.shape[0], batch_size):
                try:
                    _body_if_enough(model, ["model.layers"])(
                        input_ids=windows[start : start + batch_size].to(model.device), use_cache=False
                    )
                except _StopForward:
                    pass
    finally:
        handle.remove()
    return captured


def _with_hidden(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
    if args:
        return (hidden, *args[1:]), kwargs
    return args, dict(kwargs, hidden_states=hidden)


def sequential_linear_inputs(
    model,
    windows: torch.Tensor,
    *,
    skip: Iterable[str] = (),
    hessian: bool = False,
    batch_size: int = 8,
    progress: Progress | None = None,
):
    """Input statistics of each decoder layer's linears, one layer at a time, as a generator of
    `(layer index, {module name: LinearInputStats})`.

    Each layer's inputs are the outputs of the layers before it *as they are when the caller asks for the
    next layer*: a caller that quantizes (or prunes) layer i before resuming makes layer i+1 see the
    already-compressed model, as GPTQ's sequential mode needs. Costs about two forward passes of the
    decoder body in all, and keeps one layer's worth of calibration hidden states in memory.
    Linears outside the decoder layers (the output head) are not visited: use `capture_linear_inputs`.
    """
    layers = decoder_layers(model)
    prefix_of = {id(m): n for n, m in model.named_modules()}
    patterns = list(skip)
    calls = _first_layer_inputs(model, windows, batch_size)
    hidden = [(args[0] if args else kwargs["hidden_states"]) for args, kwargs in calls]
    total = len(layers)
    for index, layer in enumerate(layers):
        prefix = prefix_of[id(layer)]
        names = {
            f"{prefix}.{n}": m
            for n, m in layer.named_modules()
            if isinstance(m, torch.nn.Linear) and not any(fnmatch(f"{prefix}.{n}", p) for p in patterns)
        }
        stats: dict[str, LinearInputStats] = {}
        handles = [
            m.register_forward_hook(
                lambda _m, args, _out, name=name, stats=stats: _accumulate(stats, name, args[0], hessian)
            )
            for name, m in names.items()
        ]
        try:
            with torch.inference_mode():
                for (args, kwargs), h in zip(calls, hidden, strict=True):
                    a, k = _with_hidden(args, kwargs, h)
                    layer(*a, **k)
        finally:
            for handle in handles:
                handle.remove()
        yield index, stats
        # The caller may have changed this layer: its outputs feed the next one.
        with torch.inference_mode():
            for i, ((args, kwargs), h) in enumerate(zip(calls, hidden, strict=True)):
                a, k = _with_hidden(args, kwargs, h)
                hidden[i] = _hidden(layer(*a, **k))
        if progress:
            progress(ProgressEvent("calibrating", index + 1, total, "layers"))
