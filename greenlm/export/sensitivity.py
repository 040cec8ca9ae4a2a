"""How much each weight matrix's rounding costs in KL divergence from the float model, on calibration text.

Two estimates, both against the model's own next-token distribution (the KLD `greenlm eval` reports):

- `fisher`: the diagonal of the Fisher information of that distribution, F_i = E[(d log p(y) / d w_i)^2] with
  y drawn from the model itself, from one backward pass per calibration window. For a small change dw,
  KL(p || p_dw) ~= 1/2 sum_i F_i dw_i^2 per token, so every (matrix, type) pair costs one weighted sum, and the
  per-matrix costs add up (the diagonal approximation: no cross terms between weights).
- `measured`: the KLD itself, with only that matrix replaced by its rounded values, one forward pass over the
  windows per (matrix, type). Exact for one matrix at a time; expensive (matrices x types passes).

`bench/fastpath.py` reports how well the first ranks the matrices against the second on the built-in model.
Calibration text only: evaluation text never reaches here.
"""

from __future__ import annotations

import torch

from greenlm.evaluate.metrics import exact_kl
from greenlm.progress import Progress, ProgressEvent, no_progress


def fisher_diagonal(
    model, windows: torch.Tensor, *, draws: int = 1, seed: int = 0, progress: Progress = no_progress
) -> dict[str, torch.Tensor]:
    """Per parameter name: the diagonal Fisher of the model's next-token distribution, per token, in the
    parameter's shape. Tied parameters appear once (under their first name)."""
    params = dict(model.named_parameters())
    was = {name: p.requires_grad for name, p in params.items()}
    fisher = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in params.items()}
    gen = torch.Generator().manual_seed(seed)
    tokens = 0
    try:
        for p in params.values():
            p.requires_grad_(True)
        total = len(windows) * draws
        for index, window in enumerate(windows):
            for draw in range(draws):
                model.zero_grad(set_to_none=True)
                with torch.enable_grad():
                    logits = model(input_ids=window[None]).logits[0].float()
                    logp = torch.log_softmax(logits, -1)
                    # labels drawn from the model itself: the squared gradient of their log-likelihood is an
                    # unbiased estimate of the Fisher summed over the window's positions
                    labels = torch.multinomial(logp.detach().exp(), 1, generator=gen)
                    logp.gather(-1, labels).sum().backward()
                for name, p in params.items():
                    if p.grad is not None:
                        fisher[name] += p.grad.detach().float() ** 2
                progress(ProgressEvent("fisher sensitivity", index * draws + draw + 1, total, "passes"))
            tokens += int(window.numel())
    finally:
        model.zero_grad(set_to_none=True)
        for name, p in params.items():
            p.requires_grad_(was[name])
    # each draw of each window estimates the Fisher summed over that window's tokens
    return {name: f / (draws * max(tokens, 1)) for name, f in fisher.items()}


def fisher_kld(fisher: torch.Tensor, delta: torch.Tensor) -> float:
    """Estimated KL(float || rounded) per token from one matrix's rounding error `delta` (same shape)."""
    return 0.5 * float((fisher.double() * delta.double() ** 2).sum())


def reference_logprobs(model, windows: torch.Tensor) -> list[torch.Tensor]:
    """The float model's next-token log-probabilities per window ([tokens, vocab] each)."""
    with torch.inference_mode():
        return [torch.log_softmax(model(input_ids=w[None]).logits[0].float(), -1) for w in windows]


def window_kld(ref: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(reference || model) at each position of one window, from reference log-probs and model logits.

    In float64, with both distributions normalised there: one matrix's rounding moves the KL by ~1e-5 nats,
    near what float32 sums over a vocabulary round away, so a float32 KL took its sign from the host's SIMD
    width (negative on an AVX2 machine). `exact_kl` clamps the float64 residue; a KL is never negative.
    """
    return exact_kl(torch.log_softmax(ref.double(), -1), torch.log_softmax(logits.double(), -1))


def measured_kld(model, param: torch.nn.Parameter, value: torch.Tensor, windows, refs) -> float:
    """Mean KL over the windows' positions with `param` replaced by `value` (restored afterwards)."""
    saved = param.detach().clone()
    try:
        with torch.no_grad():
            param.copy_(value.to(param.dtype))
        with torch.inference_mode():
            per = [
                window_kld(ref, model(input_ids=w[None]).logits[0])
                for w, ref in zip(windows, refs, strict=True)
            ]
        return float(torch.cat(per).mean())
    finally:
        with torch.no_grad():
            param.copy_(saved)
