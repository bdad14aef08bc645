"""Knowledge distillation's divergences between a teacher's and a student's next-token distributions, as pure
functions of log-probabilities over one support: the whole vocabulary, or the teacher's top-k tokens
renormalised over those k (what a cache of top-k teacher log-probs holds)."""

from __future__ import annotations

import math

import torch


def generalized_jsd(student: torch.Tensor, teacher: torch.Tensor, beta: float) -> torch.Tensor:
    """The divergence at each position (the last dimension is the support; log-probs in, fp32 advised):
    beta 0 is the forward KL(teacher ‖ student) (classic KD, mode-covering), beta 1 the reverse
    KL(student ‖ teacher) (mode-seeking), and in between the generalised Jensen-Shannon divergence of GKD
    (Agarwal et al., 2024, https://arxiv.org/abs/2306.13649, eq. 1): β·KL(teacher ‖ m) + (1 − β)·KL(student ‖ m)
    with m = β·teacher + (1 − β)·student, as TRL's `generalized_jsd_loss` computes it."""
    if beta == 0:
        return _kl(teacher, student)
    if beta == 1:
        return _kl(student, teacher)
    mixture = torch.logsumexp(torch.stack([student + math.log1p(-beta), teacher + math.log(beta)]), dim=0)
    return beta * _kl(teacher, mixture) + (1 - beta) * _kl(student, mixture)


def _kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) over the last dimension, from log-probs; a token p gives no probability (log-prob -inf, e.g. a
    masked vocabulary entry) counts zero, with a zero gradient rather than NaN."""
    never = torch.isneginf(p)
    terms = p.exp() * (torch.where(never, torch.zeros_like(p), p) - q)
    return torch.where(never, torch.zeros_like(terms), terms).sum(-1)


def full_support(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                 temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Both models' log-probs over the whole vocabulary at temperature T."""
    return (torch.log_softmax(student_logits.float() / temperature, dim=-1),
            torch.log_softmax(teacher_logits.float() / temperature, dim=-1))


def top_k_support(student_logits: torch.Tensor, teacher_logprobs: torch.Tensor, teacher_ids: torch.Tensor,
                  temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Both models' log-probs over the teacher's top-k tokens (`teacher_ids`, with its log-probs at T = 1),
    renormalised over those k at temperature T: softmax(logit / T) restricted to the k. Shapes: student logits
    (..., vocab), teacher log-probs and ids (..., k)."""
    student = torch.log_softmax(student_logits.float().gather(-1, teacher_ids) / temperature, dim=-1)
    return student, torch.log_softmax(teacher_logprobs.float() / temperature, dim=-1)
