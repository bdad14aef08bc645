"""The regularisation terms of continual learning, as pure functions of tensors (each tested against values
computed by hand). A strategy turns one into the loop's `penalty`, added to any objective's loss once per
optimizer step; the objective never knows."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from tuneforge.objectives.distill import generalized_jsd, top_k_support


def l2sp(params: dict[str, torch.Tensor], anchors: dict[str, torch.Tensor], strength: float) -> torch.Tensor:
    """L2-SP (Li et al., 2018, https://arxiv.org/abs/1802.01483): strength/2 · Σ (θ - θ₀)², a pull toward the
    weights the task started from."""
    return strength / 2 * sum(((p - anchors[name]) ** 2).sum() for name, p in params.items())


def ewc(params: dict[str, torch.Tensor], anchors: dict[str, torch.Tensor], fisher: dict[str, torch.Tensor],
        strength: float) -> torch.Tensor:
    """Elastic weight consolidation (Kirkpatrick et al., 2017, https://arxiv.org/abs/1612.00796):
    strength/2 · Σ F (θ - θ*)², each weight held to where the earlier tasks left it as much as their diagonal
    Fisher information says it mattered."""
    return strength / 2 * sum((fisher[name] * (p - anchors[name]) ** 2).sum() for name, p in params.items())


def orthogonality(current: list[torch.Tensor], earlier: list[list[torch.Tensor]], strength: float) -> torch.Tensor:
    """O-LoRA (Wang et al., 2023, https://arxiv.org/abs/2310.14152): strength · Σ ‖A_old A_newᵀ‖², so the new
    task's LoRA down-projections (rows of A, shape r × in) span a subspace orthogonal to each earlier task's.
    `current[i]` is layer i's A of the task being trained, `earlier[t][i]` the same layer's A of task t."""
    return strength * sum(((old[i] @ a.T) ** 2).sum() for old in earlier for i, a in enumerate(current))


def distillation(student_logits: torch.Tensor, teacher_logprobs: torch.Tensor, teacher_ids: torch.Tensor,
                 temperature: float) -> torch.Tensor:
    """Learning without forgetting's term (Li & Hoiem, 2016, https://arxiv.org/abs/1606.09282): the forward KL
    from the earlier model's next-token distribution (its top-k log-probs and the rest of the vocabulary as one more
    entry, at temperature T) to the current model's over the same k tokens, times T², averaged over positions. Shapes:
    logits (n, vocab), teacher log-probs (at T = 1) and ids (n, k)."""
    student, teacher = top_k_support(student_logits, teacher_logprobs, teacher_ids, temperature)
    return temperature ** 2 * generalized_jsd(student, teacher, beta=0).mean()


def diagonal_fisher(squared_grads: Iterable[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The empirical diagonal Fisher: the mean over examples of each weight's squared per-example gradient
    (summed as they come, so only one example's gradients are held at a time)."""
    total: dict[str, torch.Tensor] = {}
    count = 0
    for grads in squared_grads:
        count += 1
        for name, value in grads.items():
            total[name] = total[name].add_(value) if name in total else value.clone()
    return {name: value / count for name, value in total.items()}
