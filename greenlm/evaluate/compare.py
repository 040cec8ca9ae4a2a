"""Score a loaded engine against cached reference statistics: perplexity, KLD and top-1 agreement.

The engine is fed the reference's own window token ids, so every engine (transformers, llama.cpp, ...) is
judged on identical tokens. The optimizer keeps one engine loaded and calls this twice: a cheap screen with a
small `max_eval_tokens`, then the full evaluation, both against one reference computed once.
"""

from __future__ import annotations

import math
import time

import torch

from greenlm.engines.base import Engine
from greenlm.errors import GreenlmError
from greenlm.evaluate.metrics import sampled_kl, target_nll, top1_matches, top_k_kl, top_k_mass
from greenlm.evaluate.reference import ReferenceStats, check_window_fits, logprob_windows
from greenlm.evaluate.result import QualityStats, kld_method, mean_stderr
from greenlm.progress import Progress, no_progress


def percentile(values: torch.Tensor, pct: float) -> float:
    """Nearest-rank percentile; unlike torch.quantile it has no input-size limit."""
    ordered = values.double().flatten().sort().values
    return float(ordered[min(len(ordered) - 1, math.ceil(pct / 100.0 * len(ordered)) - 1)])


def model_vocab_size(engine: Engine) -> int:
    """The width of the engine's output distribution, from one single-token forward pass (token 0 exists in
    every vocabulary), before any window whose ids might be out of the model's range is fed to it."""
    logits = torch.as_tensor(engine.logits([[0]]))
    return int(logits.shape[-1])


def check_compatible(engine: Engine, reference: ReferenceStats) -> bool:
    """Refuse a model whose vocabulary differs from the reference's; say whether its tokenizer agrees."""
    vocab = model_vocab_size(engine)
    if vocab != reference.vocab_size:
        raise GreenlmError(
            f"{engine.model_name} has a vocabulary of {vocab} tokens but the reference {reference.model} has "
            f"{reference.vocab_size}: KLD and top-1 need the same tokenizer; pass a --reference from the same "
            "model family, or evaluate without one (--no-reference) for perplexity only"
        )
    check_window_fits(engine, reference.window_tokens)
    try:
        return list(engine.tokenize(reference.probe_text)) == list(reference.probe_ids)
    except NotImplementedError:
        return True


def compare_to_reference(
    engine: Engine,
    reference: ReferenceStats,
    *,
    max_eval_tokens: int | None = None,
    batch_windows: int = 1,
    progress: Progress | None = None,
) -> QualityStats:
    """Perplexity, KLD (exact over the top-k, sampled tail) and top-1 agreement of `engine` on the reference's windows.

    `max_eval_tokens` picks an evenly spread subset of the reference's windows (all when None); the reference
    perplexity it is compared with is computed on the same subset.
    """
    progress = progress or no_progress
    if batch_windows < 1:
        raise GreenlmError(f"batch_windows must be at least 1, got {batch_windows}")
    tokenizer_match = check_compatible(engine, reference)
    idx = reference.select(max_eval_tokens)
    token_ids = reference.token_ids[idx]
    window_nll, window_kl, window_bound, kl_all, agree = [], [], [], [], 0
    start = time.perf_counter()
    for i, logp in logprob_windows(engine, token_ids, batch_windows=batch_windows, progress=progress):
        w = idx[i]
        device = logp.device
        nll = target_nll(logp, token_ids[i, 1:].to(device))
        top_ids, top_logp = reference.topk_ids[w].to(device), reference.topk_logp[w].to(device)
        kl = sampled_kl(
            top_ids, top_logp, reference.tail_ids[w].to(device), reference.tail_logp[w].to(device), logp
        )
        window_bound.append(top_k_kl(top_ids, top_logp, logp).mean().cpu())
        agree += int(top1_matches(reference.topk_ids[w, :, 0], logp).sum())
        window_nll.append(nll.double().mean().cpu())
        window_kl.append(kl.mean().cpu())
        kl_all.append(kl.cpu())
    engine.sync()
    eval_s = time.perf_counter() - start

    per_window_nll = torch.stack(window_nll)
    per_window_ref = reference.nll[idx].double().mean(-1)
    nll_mean, nll_se = mean_stderr(per_window_nll)
    ref_mean = float(per_window_ref.mean())
    diff_mean, diff_se = mean_stderr(per_window_nll - per_window_ref)
    kld, kld_se = mean_stderr(torch.stack(window_kl))
    kl_all_t = torch.cat(kl_all)
    mass = top_k_mass(reference.topk_logp[idx].reshape(-1, reference.top_k))
    positions = len(idx) * (reference.window_tokens - 1)
    ratio = math.exp(diff_mean)
    return QualityStats.from_nll(
        nll_mean,
        nll_se,
        len(idx),
        reference.window_tokens,
        eval_s,
        ppl_reference=math.exp(ref_mean),
        ppl_increase_pct=(ratio - 1.0) * 100.0,
        ppl_increase_pct_stderr=None if diff_se is None else ratio * diff_se * 100.0,
        kld=kld,
        kld_stderr=kld_se,
        kld_lower_bound=float(torch.stack(window_bound).mean()),
        kld_p99=percentile(kl_all_t, 99.0),
        kld_method=kld_method(reference.top_k, reference.tail_samples),
        top1_agreement=agree / positions,
        top_k=reference.top_k,
        tail_samples=reference.tail_samples,
        ref_topk_mass=float(mass.mean()),
        ref_topk_mass_min=float(mass.min()),
        tokenizer_match=tokenizer_match,
    )
