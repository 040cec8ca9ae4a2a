"""Distillation losses on the teacher's next-token distribution (the generalized-JSD family of GKD,
Agarwal et al. 2024, as TRL's GKD trainer uses it).

With P the teacher and Q the student at temperature T (logits / T):

    forward-kl   KL(P || Q)   mean-seeking: the student covers every token the teacher likes
    reverse-kl   KL(Q || P)   mode-seeking: the student concentrates on the teacher's likeliest tokens
    jsd          beta KL(P || M) + (1 - beta) KL(Q || M),  M = beta P + (1 - beta) Q, beta in (0, 1)

per position, averaged over positions and scaled by T^2 so gradients keep their size when T changes (Hinton
et al. 2015). With a cached teacher (its top-k tokens only), both distributions are reduced to k + 1 buckets,
the top-k tokens plus "everything else": an exact distribution on a coarser space, whose divergence is a lower
bound on the full-vocabulary one (data-processing inequality) and still pushes the student's mass outside the
teacher's top-k down as a whole.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from greenlm.train.settings import LOSSES

_TINY = 1e-12  # floor for the rest bucket's probability: its log must stay finite


@dataclass(frozen=True)
class TeacherTopK:
    """The teacher's `k` likeliest tokens per position and their log-probabilities at the loss temperature."""

    ids: torch.Tensor  # [..., k] token ids
    logp: torch.Tensor  # [..., k] log-probabilities over the full vocabulary


def kl(p_logp: torch.Tensor, q_logp: torch.Tensor) -> torch.Tensor:
    """KL(P || Q) over the last dimension, from log-probabilities."""
    return (p_logp.exp() * (p_logp - q_logp)).sum(-1)


def generalized_jsd(p_logp: torch.Tensor, q_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """beta KL(P || M) + (1 - beta) KL(Q || M) with the mixture M = beta P + (1 - beta) Q, beta in (0, 1)."""
    if not 0.0 < beta < 1.0:
        raise ValueError(f"jsd beta must be strictly between 0 and 1, got {beta}")
    m_logp = torch.logaddexp(p_logp + math.log(beta), q_logp + math.log1p(-beta))
    return beta * kl(p_logp, m_logp) + (1.0 - beta) * kl(q_logp, m_logp)


def divergence(
    teacher_logp: torch.Tensor, student_logp: torch.Tensor, loss: str, beta: float
) -> torch.Tensor:
    """Per-position divergence between two distributions given as log-probabilities."""
    if loss == "forward-kl":
        return kl(teacher_logp, student_logp)
    if loss == "reverse-kl":
        return kl(student_logp, teacher_logp)
    if loss == "jsd":
        return generalized_jsd(teacher_logp, student_logp, beta)
    raise ValueError(f"unknown loss {loss!r}: choose one of {', '.join(LOSSES)}")


def rest_logp(top_logp: torch.Tensor) -> torch.Tensor:
    """[...] log of the probability outside the given top tokens: log(1 - sum exp(top_logp)), floored."""
    inside = top_logp.exp().sum(-1)
    return torch.log((1.0 - inside).clamp_min(_TINY))


def bucketed(logp: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """[..., k + 1]: the full-vocabulary log-probabilities `logp` reduced to the tokens `ids` plus a rest bucket."""
    top = logp.gather(-1, ids)
    return torch.cat([top, rest_logp(top).unsqueeze(-1)], dim=-1)


def teacher_topk(teacher_logits: torch.Tensor, k: int, temperature: float) -> TeacherTopK:
    """The teacher's top-k tokens and their log-probabilities at `temperature` (what the cache stores)."""
    logp = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    values, ids = logp.topk(k, dim=-1)
    return TeacherTopK(ids=ids, logp=values)


def distill_loss(
    student_logits: torch.Tensor,
    teacher: torch.Tensor | TeacherTopK,
    *,
    loss: str = "jsd",
    beta: float = 0.5,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Mean divergence over positions between the teacher (full logits, or its cached top-k) and the
    student's logits [..., vocab], at `temperature`, times temperature^2."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    student_logp = F.log_softmax(student_logits.float() / temperature, dim=-1)
    if isinstance(teacher, TeacherTopK):
        teacher_logp = torch.cat(
            [teacher.logp.float(), rest_logp(teacher.logp.float()).unsqueeze(-1)], dim=-1
        )
        student_logp = bucketed(student_logp, teacher.ids.long())
    else:
        teacher_logp = F.log_softmax(teacher.float() / temperature, dim=-1)
    return divergence(teacher_logp, student_logp, loss, beta).mean() * temperature**2


def next_token_ce(student_logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the student on the text itself (each position predicts the next token)."""
    logits = student_logits[:, :-1].float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), input_ids[:, 1:].reshape(-1))
