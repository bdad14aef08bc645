"""The pure pieces of online RL from rewards: advantages and the PPO losses, on fixed tensors.

The rollout-driven objectives (`grpo`, `rloo`, `ppo`) are built from these; each function here is a
formula from its paper, tested against values computed by hand.
"""

from __future__ import annotations

import torch


def group_advantages(rewards: torch.Tensor, *, scale: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """GRPO (Shao et al., 2024, https://arxiv.org/abs/2402.03300): each completion's reward relative to the
    other completions of the same prompt. `rewards` is [prompts, group]; the advantage is
    (r − mean) / (std + eps) within each group (sample std), or r − mean without `scale` (Dr. GRPO)."""
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    return centred / (rewards.std(dim=1, keepdim=True) + eps) if scale else centred


def leave_one_out_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """RLOO (Ahmadian et al., 2024, https://arxiv.org/abs/2402.14740): each reward minus the mean of the
    other k − 1 rewards of its group; `rewards` is [prompts, group] with group ≥ 2."""
    k = rewards.shape[1]
    others = (rewards.sum(dim=1, keepdim=True) - rewards) / (k - 1)
    return rewards - others


def generalized_advantages(rewards: torch.Tensor, values: torch.Tensor, *, gamma: float = 1.0,
                           lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE (Schulman et al., 2015, https://arxiv.org/abs/1506.02438) over [batch, steps] rewards and value
    estimates, the episode ending after the last step: δ_t = r_t + γ V_{t+1} − V_t, A_t = δ_t + γλ A_{t+1}.
    Returns (advantages, returns = advantages + values)."""
    steps = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(steps)):
        next_value = values[:, t + 1] if t + 1 < steps else torch.zeros_like(values[:, t])
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
    return advantages, advantages + values


def clipped_policy_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor,
                        clip: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate (Schulman et al., 2017, https://arxiv.org/abs/1707.06347), per token:
    −min(ρ A, clip(ρ, 1 − ε, 1 + ε) A) with ρ = exp(logπ − logπ_old). Also returns where the clip was
    active (for the clip fraction that is logged)."""
    ratio = torch.exp(logps - old_logps)
    unclipped, clipped = ratio * advantages, torch.clamp(ratio, 1 - clip, 1 + clip) * advantages
    return -torch.minimum(unclipped, clipped), clipped < unclipped


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                       clip: float = 0.2) -> torch.Tensor:
    """PPO's clipped value loss, per token: ½ max((V − R)², (V_old + clip(V − V_old, −ε, ε) − R)²)."""
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    return 0.5 * torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)
