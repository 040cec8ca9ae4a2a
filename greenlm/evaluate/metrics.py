"""The quality math as pure functions on tensors: next-token log-probs, NLL, top-k summaries, KL, agreement.

Shapes: `logits` [positions + 1, vocab] for one window; everything else is per scored position [N, ...].
Position t's distribution predicts token t + 1, so a window of T tokens gives T - 1 predictions.
"""

from __future__ import annotations

import torch

# A model that puts (numerically) no mass outside the reference's top-k still gets a finite rest-bucket term.
# float32 log-softmax carries ~1e-7 absolute error, so smaller masses are noise anyway.
MIN_REST_MASS = 1e-10


def next_token_logprobs(logits: torch.Tensor) -> torch.Tensor:
    """[T, V] logits of one window -> [T - 1, V] log-probabilities of the next token at each position."""
    return torch.log_softmax(logits[:-1].float(), dim=-1)


def target_nll(logprobs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of the token that really came next: [N, V], [N] -> [N]."""
    return -logprobs.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)


def top_k_summary(logprobs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k most likely token ids per position (most likely first) and their log-probs: [N, k] each."""
    values, ids = torch.topk(logprobs, min(k, logprobs.shape[-1]), dim=-1, sorted=True)
    return ids, values


def top_k_mass(ref_topk_logp: torch.Tensor) -> torch.Tensor:
    """Share of the reference's probability that its top-k tokens hold, per position: [N, k] -> [N]."""
    return ref_topk_logp.double().exp().sum(-1).clamp(max=1.0)


def top_k_kl(ref_topk_ids: torch.Tensor, ref_topk_logp: torch.Tensor, logprobs: torch.Tensor) -> torch.Tensor:
    """KL(reference || model) per position over the reference's top-k tokens plus one bucket for the rest.

    Merging the other tokens into one bucket is a coarse-graining, so by the data-processing inequality this
    never exceeds the full-vocabulary KL; with the top 128 tokens holding nearly all the reference's mass the
    gap is small (`tests/evaluate` measures it). [N, k] ids and log-probs, [N, V] model log-probs -> [N].
    """
    lp = ref_topk_logp.double()
    lq = logprobs.gather(-1, ref_topk_ids.long()).double()
    p = lp.exp()
    head = (p * (lp - lq)).sum(-1)
    p_rest = (1.0 - p.sum(-1)).clamp(min=0.0)
    q_rest = (1.0 - lq.exp().sum(-1)).clamp(min=MIN_REST_MASS)
    rest = torch.where(
        p_rest > 0, p_rest * (torch.log(p_rest.clamp(min=MIN_REST_MASS)) - torch.log(q_rest)), 0.0
    )
    # The divergence is non-negative; float rounding can leave -1e-9 on identical distributions.
    return (head + rest).clamp(min=0.0)


def sample_tail(
    logprobs: torch.Tensor, topk_ids: torch.Tensor, samples: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw `samples` token ids per position from the reference's distribution restricted to the tokens
    outside its top-k (with replacement), and their log-probs: [N, V], [N, k] -> [N, m] each.

    Positions whose top-k holds all the mass get token 0 as a placeholder; its weight, the rest mass, is 0.
    """
    tail = logprobs.exp().scatter(-1, topk_ids.long(), 0.0)
    empty = tail.sum(-1) <= 0
    if bool(empty.any()):
        tail[empty, 0] = 1.0
    ids = torch.multinomial(tail, samples, replacement=True, generator=generator)
    return ids, logprobs.gather(-1, ids)


def sampled_kl(
    ref_topk_ids: torch.Tensor,
    ref_topk_logp: torch.Tensor,
    tail_ids: torch.Tensor,
    tail_logp: torch.Tensor,
    logprobs: torch.Tensor,
) -> torch.Tensor:
    """Estimate of the full-vocabulary KL(reference || model) per position: exact over the top-k tokens, plus
    the rest mass times the mean log-ratio over tokens sampled from the reference's tail.

    KL = sum_top p (log p - log q) + P_rest * E_{v ~ p | tail}[log p_v - log q_v], so the estimate is unbiased;
    a single position's value can dip below 0, the mean over thousands of positions is tight. [N] out.
    """
    lp = ref_topk_logp.double()
    lq = logprobs.gather(-1, ref_topk_ids.long()).double()
    head = (lp.exp() * (lp - lq)).sum(-1)
    p_rest = (1.0 - lp.exp().sum(-1)).clamp(min=0.0)
    tail = (tail_logp.double() - logprobs.gather(-1, tail_ids.long()).double()).mean(-1)
    return head + p_rest * tail


def exact_kl(ref_logprobs: torch.Tensor, logprobs: torch.Tensor) -> torch.Tensor:
    """Full-vocabulary KL(reference || model) per position: [N, V], [N, V] -> [N]."""
    lp, lq = ref_logprobs.double(), logprobs.double()
    return (lp.exp() * (lp - lq)).sum(-1).clamp(min=0.0)


def top1_matches(ref_top1: torch.Tensor, logprobs: torch.Tensor) -> torch.Tensor:
    """Whether the model's most likely next token is the reference's: [N], [N, V] -> bool [N]."""
    return logprobs.argmax(-1) == ref_top1.to(logprobs.device).long()
