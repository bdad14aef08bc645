"""Online RL from rewards: the pure pieces (advantages, the PPO losses, the KL estimate), each a formula
from its paper tested against values computed by hand, and the objectives built from them.

The engine samples completions for each prompt (`engine/rollout.py`), scores them with the configured
reward functions, and hands the objective's `advantages` the rewards as [prompts, group]. The sampled
sequences then train like any batch: the loss below reads each sequence's advantage from the batch.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from tuneforge.models.parts import label_token_logps
from tuneforge.objectives.base import LossContext, LossOutput, Objective, ObjectiveParams


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


def kl_k3(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Per token, Schulman's unbiased, always non-negative estimate of KL(π ‖ π_ref) from samples of π
    (http://joschu.net/blog/kl-approx.html, used by GRPO): exp(r) − r − 1 with r = log π_ref − log π."""
    r = ref_logps - logps
    return torch.exp(r) - r - 1


class RewardSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="a built-in (exact_match, number_match, number_only, length_penalty) or a "
                                  "dotted path to your function")
    weight: float = 1.0

    def __repr__(self) -> str:  # as `tuneforge methods` lists defaults
        return self.name if self.weight == 1.0 else f"{self.name}×{self.weight:g}"


class OnlineParams(ObjectiveParams):
    rewards: list[RewardSpec] = Field(default_factory=lambda: [RewardSpec(name="exact_match")],
                                      description="reward functions, each a name or {name, weight}; summed")
    group_size: int = Field(8, ge=2, description="completions sampled per prompt")
    temperature: float = Field(1.0, gt=0, description="sampling temperature of the rollouts")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling of the rollouts")
    max_new_tokens: int = Field(32, ge=1, description="the most tokens a completion may have")
    beta: float = Field(0.04, ge=0, description="weight of the KL penalty to the reference (0: no reference)")
    clip: float = Field(0.2, gt=0, description="PPO ratio clip ε")

    @field_validator("rewards", mode="before")
    @classmethod
    def _names(cls, value):
        items = value if isinstance(value, list) else [value]
        return [{"name": item} if isinstance(item, str) else item for item in items]


class GrpoParams(OnlineParams):
    scale_rewards: bool = Field(True, description="divide advantages by the group's reward std (false: Dr. GRPO)")


def policy_gradient_loss(model, batch: dict[str, torch.Tensor], ctx: LossContext) -> LossOutput:
    """The clipped surrogate on every completion token with its sequence's advantage, plus β·KL to the
    reference, averaged over the window's completion tokens (token-level, as DAPO and TRL's default).
    With one optimizer step per rollout the old policy is the current one (ratio 1, the gradient of
    A·log π); `old_logps` in the batch, when present, are the sampling policy's."""
    params = ctx.params
    logps, owner = label_token_logps(model, batch)
    old = batch["old_logps"] if "old_logps" in batch else logps.detach()
    per_token, clipped = clipped_policy_loss(logps, old, batch["advantages"][owner].to(logps.dtype), params.clip)
    n = max(ctx.num_label_tokens, 1)
    metrics = {"clip_fraction": float(clipped.sum()) / n}
    if params.beta > 0:
        if ctx.reference is None:
            raise RuntimeError("a KL penalty needs a reference model, and the engine gave none")
        with torch.no_grad(), ctx.reference() as reference:
            ref_logps, _ = label_token_logps(reference, batch)
        kl = kl_k3(logps, ref_logps)
        per_token = per_token + params.beta * kl
        metrics["kl"] = float(kl.detach().sum()) / n
    return LossOutput(per_token.sum() / n, metrics)


def _grpo_advantages(rewards: torch.Tensor, params: GrpoParams) -> torch.Tensor:
    return group_advantages(rewards, scale=params.scale_rewards)


def _rloo_advantages(rewards: torch.Tensor, params: OnlineParams) -> torch.Tensor:
    return leave_one_out_advantages(rewards)


OBJECTIVES = (
    Objective("grpo", "group-relative policy optimisation: sampled groups per prompt, scored by reward functions",
              policy_gradient_loss, GrpoParams, data="prompts", needs_reference=True, advantages=_grpo_advantages),
    Objective("rloo", "REINFORCE leave-one-out: each completion against the mean of its group's others",
              policy_gradient_loss, OnlineParams, data="prompts", needs_reference=True, advantages=_rloo_advantages),
)
