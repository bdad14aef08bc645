"""Online RL from rewards: the pure pieces (advantages, the PPO losses, the KL estimate), each a formula
from its paper tested against values computed by hand, and the objectives built from them.

The engine samples completions for each prompt (`engine/rollout.py`), scores them with the configured
reward functions, and hands the objective's `advantages` the rewards as [prompts, group] (grpo, rloo: one
advantage per completion). The sampled sequences then train like any batch. An objective's `prepare` does
the no-grad work on the window before its updates: the sampling policy's and the reference's log-probs
(and for ppo the values, the KL-penalised per-token rewards and their GAE advantages and returns).
"""

from __future__ import annotations

from pathlib import Path

import torch

from tuneforge.models.parts import (
    attach_scalar_head,
    label_hidden_states,
    label_token_logps,
    load_scalar_head,
    output_head,
    save_scalar_head,
)
from tuneforge.objectives.base import LossContext, LossOutput, Objective
from tuneforge.objectives.params import GrpoParams, OnlineParams, PpoParams


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
        ref_logps = batch["ref_logps"] if "ref_logps" in batch else _reference_logps(batch, ctx)
        kl = kl_k3(logps, ref_logps)
        per_token = per_token + params.beta * kl
        metrics["kl"] = float(kl.detach().sum()) / n
    return LossOutput(per_token.sum() / n, metrics)


def _reference_logps(batch: dict[str, torch.Tensor], ctx: LossContext) -> torch.Tensor:
    if ctx.reference is None:
        raise RuntimeError("a KL penalty needs a reference model, and the engine gave none")
    with torch.no_grad(), ctx.reference() as reference:
        return label_token_logps(reference, batch)[0]


def prepare_policy_gradient(model, batches: list[dict[str, torch.Tensor]], ctx: LossContext) -> dict[str, float]:
    """With several updates per rollout: the sampling policy's log-probs (the ratio's denominator) and the
    reference's, computed once instead of at every update."""
    if ctx.params.updates > 1:
        for batch in batches:
            batch["old_logps"] = label_token_logps(model, batch)[0]
            if ctx.params.beta > 0:
                batch["ref_logps"] = _reference_logps(batch, ctx)
    return {}


# ----------------------------------------------------------------------------------------------- PPO


VALUE_HEAD = "value_head"
VALUE_FILE = "value_head.safetensors"


def token_rewards(scores: torch.Tensor, kl: torch.Tensor, lengths: torch.Tensor, beta: float) -> torch.Tensor:
    """InstructGPT's per-token reward (Ouyang et al., 2022) over [sequences, steps]: −β (log π − log π_ref)
    at every completion token (`kl` holds the differences, zero past each end), plus the sequence's score at
    its last token (`lengths` tokens long)."""
    rewards = -beta * kl
    rows = torch.nonzero(lengths > 0).squeeze(-1)
    rewards[rows, lengths[rows] - 1] += scores[rows].to(rewards.dtype)
    return rewards


def per_sequence(values: torch.Tensor, owner: torch.Tensor, count: int):
    """Token values [labels] laid out as [sequences, longest] rows (zero after each sequence's end), and a
    function that takes such rows back to the token order."""
    order = torch.sort(owner, stable=True).indices
    sorted_owner = owner[order]
    counts = torch.bincount(owner, minlength=count)
    position = torch.arange(len(owner), device=owner.device) - (torch.cumsum(counts, 0) - counts)[sorted_owner]
    rows = values.new_zeros(count, int(counts.max()) if len(owner) else 0)
    rows[sorted_owner, position] = values[order]

    def back(matrix: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(values)
        out[order] = matrix[sorted_owner, position].to(values.dtype)
        return out

    return rows, back


def _policy_and_values(model, batch: dict[str, torch.Tensor]):
    hidden, targets, owner = label_hidden_states(model, batch)
    logps = -torch.nn.functional.cross_entropy(output_head(model)(hidden).float(), targets, reduction="none")
    values = getattr(model, VALUE_HEAD)(hidden).squeeze(-1).float()
    return logps, values, owner


def prepare_ppo(model, batches: list[dict[str, torch.Tensor]], ctx: LossContext) -> dict[str, float]:
    """Per completion token: the sampling policy's log-prob and value, the reference's log-prob, the
    KL-penalised reward, and GAE advantages and returns; advantages whitened over the window."""
    params: PpoParams = ctx.params
    advantages, kls = [], []
    for batch in batches:
        logps, values, owner = _policy_and_values(model, batch)
        ref_logps = _reference_logps(batch, ctx)
        count = int(batch["num_sequences"])
        kl_rows, back = per_sequence(logps - ref_logps, owner, count)
        value_rows, _ = per_sequence(values, owner, count)
        reward_rows = token_rewards(batch["rewards"], kl_rows, torch.bincount(owner, minlength=count), params.beta)
        advantage_rows, return_rows = generalized_advantages(reward_rows, value_rows, gamma=params.gamma,
                                                              lam=params.lam)
        batch.update(old_logps=logps, old_values=values, returns=back(return_rows), advantages=back(advantage_rows))
        advantages.append(batch["advantages"])
        kls.append(logps - ref_logps)
    every = torch.cat(advantages)
    if params.whiten and every.numel() > 1:
        mean, std = every.mean(), every.std()
        for batch in batches:
            batch["advantages"] = (batch["advantages"] - mean) / (std + 1e-8)
    return {"kl": float(torch.cat(kls).mean())}


def ppo_loss(model, batch: dict[str, torch.Tensor], ctx: LossContext) -> LossOutput:
    """PPO's clipped policy loss plus vf_coef times its clipped value loss, per completion token, averaged
    over the window's completion tokens; the KL to the reference is already in the rewards."""
    params: PpoParams = ctx.params
    logps, values, _ = _policy_and_values(model, batch)
    policy, clipped = clipped_policy_loss(logps, batch["old_logps"], batch["advantages"], params.clip)
    value = clipped_value_loss(values, batch["old_values"], batch["returns"], params.value_clip)
    n = max(ctx.num_label_tokens, 1)
    metrics = {"clip_fraction": float(clipped.sum()) / n, "policy_loss": float(policy.detach().sum()) / n,
               "value_loss": float(value.detach().sum()) / n}
    return LossOutput((policy + params.vf_coef * value).sum() / n, metrics)


def _attach_value_head(model) -> None:
    attach_scalar_head(model, VALUE_HEAD)


def _save_value_head(model, run_dir) -> None:
    save_scalar_head(model, VALUE_HEAD, Path(run_dir) / VALUE_FILE)


def _load_value_head(model, run_dir) -> None:
    load_scalar_head(model, VALUE_HEAD, Path(run_dir) / VALUE_FILE)


def _grpo_advantages(rewards: torch.Tensor, params: GrpoParams) -> torch.Tensor:
    return group_advantages(rewards, scale=params.scale_rewards)


def _rloo_advantages(rewards: torch.Tensor, params: OnlineParams) -> torch.Tensor:
    return leave_one_out_advantages(rewards)


OBJECTIVES = (
    Objective("grpo", "group-relative policy optimisation: sampled groups per prompt, scored by reward functions",
              policy_gradient_loss, GrpoParams, data="prompts", needs_reference=True, advantages=_grpo_advantages,
              prepare=prepare_policy_gradient),
    Objective("rloo", "REINFORCE leave-one-out: each completion against the mean of its group's others",
              policy_gradient_loss, OnlineParams, data="prompts", needs_reference=True, advantages=_rloo_advantages,
              prepare=prepare_policy_gradient),
    Objective("ppo", "PPO: value head, GAE, clipped policy and value losses, KL penalty in the reward",
              ppo_loss, PpoParams, data="prompts", needs_reference=True, attach=_attach_value_head,
              save=_save_value_head, load=_load_value_head, prepare=prepare_ppo),
)
