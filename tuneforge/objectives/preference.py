"""Preference objectives on (prompt, chosen, rejected) pairs, the DPO family, and KTO on rated completions.

Each loss is a short pure function of per-pair log-probabilities (summed over the response tokens, or
their per-token mean where the method length-normalises), returning one loss per pair. The objective
wrappers get those log-probabilities from one forward over the concatenated chosen + rejected sequences
(and, for the reference-based losses, one no-grad forward of the reference model), average over the
accumulation window's pairs, and report the implicit rewards.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tuneforge.models.parts import sequence_logps
from tuneforge.objectives.base import LossContext, LossOutput, Objective
from tuneforge.objectives.params import BetaParams, CdpoParams, KtoParams, ObjectiveParams, OrpoParams, SimpoParams

# ----------------------------------------------------------------------------------------- the losses


def dpo_loss(chosen_ratio: torch.Tensor, rejected_ratio: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO (Rafailov et al., 2023, https://arxiv.org/abs/2305.18290). A ratio is log π(y|x) − log π_ref(y|x)."""
    return -F.logsigmoid(beta * (chosen_ratio - rejected_ratio))


def cdpo_loss(chosen_ratio: torch.Tensor, rejected_ratio: torch.Tensor, beta: float,
              label_smoothing: float) -> torch.Tensor:
    """Conservative DPO (Mitchell, 2023, https://ericmitchell.ai/cdpo.pdf): DPO assuming each preference label
    is flipped with probability `label_smoothing`."""
    margin = beta * (chosen_ratio - rejected_ratio)
    return -(1 - label_smoothing) * F.logsigmoid(margin) - label_smoothing * F.logsigmoid(-margin)


def ipo_loss(chosen_ratio_mean: torch.Tensor, rejected_ratio_mean: torch.Tensor, beta: float) -> torch.Tensor:
    """IPO (Azar et al., 2023, https://arxiv.org/abs/2310.12036): squared distance of the log-ratio margin from
    1/(2β). Ratios are per-token means, the normalisation the IPO authors used (as TRL does)."""
    return (chosen_ratio_mean - rejected_ratio_mean - 1 / (2 * beta)) ** 2


def simpo_loss(chosen_mean: torch.Tensor, rejected_mean: torch.Tensor, beta: float, gamma: float) -> torch.Tensor:
    """SimPO (Meng et al., 2024, https://arxiv.org/abs/2405.14734): reference-free; rewards are β times the
    per-token mean log-probability, and the chosen must win by the margin γ."""
    return -F.logsigmoid(beta * (chosen_mean - rejected_mean) - gamma)


def orpo_loss(chosen_mean: torch.Tensor, rejected_mean: torch.Tensor, weight: float) -> torch.Tensor:
    """ORPO (Hong et al., 2024, https://arxiv.org/abs/2403.07691): reference-free; the chosen response's NLL
    (per-token mean) plus `weight` (λ) times −log σ(log odds ratio), odds(y) = p / (1 − p) with p the
    per-token mean probability."""
    log_odds = (chosen_mean - rejected_mean) - (torch.log1p(-torch.exp(chosen_mean))
                                                - torch.log1p(-torch.exp(rejected_mean)))
    return -chosen_mean - weight * F.logsigmoid(log_odds)


def bradley_terry_loss(chosen_reward: torch.Tensor, rejected_reward: torch.Tensor,
                       margin: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Reward-model loss (Bradley & Terry, 1952; Ouyang et al., 2022, https://arxiv.org/abs/2203.02155):
    −log σ(r_chosen − r_rejected − margin), the chosen response modelled as preferred with probability
    σ of the reward difference."""
    return -F.logsigmoid(chosen_reward - rejected_reward - margin)


def kto_loss(ratio: torch.Tensor, desirable: torch.Tensor, kl: torch.Tensor | float, beta: float,
             desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> torch.Tensor:
    """KTO (Ethayarajh et al., 2024, https://arxiv.org/abs/2402.01306) on unpaired examples. `ratio` is
    log π(y|x) − log π_ref(y|x); `kl` the (detached, clamped at 0) estimate of KL(π‖π_ref) that serves as
    the reference point. A desirable example loses λ_D (1 − σ(β (ratio − kl))), an undesirable one
    λ_U (1 − σ(β (kl − ratio)))."""
    kl = torch.as_tensor(kl, dtype=ratio.dtype).clamp(min=0).detach()
    good = desirable_weight * (1 - torch.sigmoid(beta * (ratio - kl)))
    bad = undesirable_weight * (1 - torch.sigmoid(beta * (kl - ratio)))
    return torch.where(desirable, good, bad)


# ----------------------------------------------------------------------------------------- parameters


# ----------------------------------------------------------------------------------------- wrappers


@dataclass
class PairLogps:
    """Per pair: summed log-probabilities of the chosen and rejected responses, and their token counts."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor

    @property
    def chosen_mean(self) -> torch.Tensor:
        return self.chosen / self.chosen_tokens.clamp(min=1)

    @property
    def rejected_mean(self) -> torch.Tensor:
        return self.rejected / self.rejected_tokens.clamp(min=1)


def pair_logps(model, batch: dict[str, torch.Tensor]) -> PairLogps:
    """One forward over all chosen and rejected sequences (chosen first, see `batch_sequences`)."""
    sums, tokens = sequence_logps(model, batch)
    pairs = int(batch["num_examples"])
    return PairLogps(sums[:pairs], sums[pairs:], tokens[:pairs], tokens[pairs:])


def reference_pair_logps(batch: dict[str, torch.Tensor], ctx: LossContext) -> PairLogps:
    if ctx.reference is None:
        raise RuntimeError("this objective needs a reference model, and the engine gave none")
    with torch.no_grad(), ctx.reference() as reference:
        return pair_logps(reference, batch)


def pair_output(losses: torch.Tensor, chosen_reward: torch.Tensor, rejected_reward: torch.Tensor,
            ctx: LossContext) -> LossOutput:
    """The pairs' share of the window's mean loss, and of the mean implicit rewards, margin and accuracy."""
    n = max(ctx.num_examples, 1)
    chosen_reward, rejected_reward = chosen_reward.detach(), rejected_reward.detach()
    metrics = {"reward_accuracy": float((chosen_reward > rejected_reward).sum()) / n,
               "reward_margin": float((chosen_reward - rejected_reward).sum()) / n,
               "reward_chosen": float(chosen_reward.sum()) / n, "reward_rejected": float(rejected_reward.sum()) / n}
    return LossOutput(losses.sum() / n, metrics)


def _with_reference(loss: Callable[[PairLogps, PairLogps, ObjectiveParams], torch.Tensor]):
    """An objective whose rewards are β·(log π − log π_ref) of each response."""

    def objective(model, batch: dict[str, torch.Tensor], ctx: LossContext) -> LossOutput:
        policy, reference = pair_logps(model, batch), reference_pair_logps(batch, ctx)
        beta = ctx.params.beta
        return pair_output(loss(policy, reference, ctx.params), beta * (policy.chosen - reference.chosen),
                       beta * (policy.rejected - reference.rejected), ctx)

    return objective


def _reference_free(loss: Callable[[PairLogps, ObjectiveParams], torch.Tensor]):
    """An objective whose rewards are β times each response's per-token mean log-probability."""

    def objective(model, batch: dict[str, torch.Tensor], ctx: LossContext) -> LossOutput:
        policy = pair_logps(model, batch)
        beta = ctx.params.beta
        return pair_output(loss(policy, ctx.params), beta * policy.chosen_mean, beta * policy.rejected_mean, ctx)

    return objective


def _kto(model, batch: dict[str, torch.Tensor], ctx: LossContext) -> LossOutput:
    """KTO on rated completions. Each example's second sequence is its prompt with another record's
    completion (`data.formats.with_kl_completions`); their mean log-ratio is the micro-batch's estimate of
    KL(π‖π_ref), the reference point (detached, as in the paper)."""
    policy, reference = pair_logps(model, batch), reference_pair_logps(batch, ctx)
    params: KtoParams = ctx.params
    ratio = policy.chosen - reference.chosen
    kl = (policy.rejected - reference.rejected).detach().mean().clamp(min=0)
    desirable = batch["desirable"]
    losses = kto_loss(ratio, desirable, kl, params.beta, params.desirable_weight, params.undesirable_weight)
    n = max(ctx.num_examples, 1)
    # the implicit reward against the reference point, signed so that agreeing with the label is positive
    signed = torch.where(desirable, 1.0, -1.0) * params.beta * (ratio.detach() - kl)
    metrics = {"reward_accuracy": float((signed > 0).sum()) / n, "reward_margin": float(signed.sum()) / n,
               "kl": float(kl) * len(ratio) / n}
    return LossOutput(losses.sum() / n, metrics)


OBJECTIVES = (
    Objective("dpo", "direct preference optimisation against the frozen reference", _with_reference(
        lambda p, r, a: dpo_loss(p.chosen - r.chosen, p.rejected - r.rejected, a.beta)),
        BetaParams, data="pairs", needs_reference=True),
    Objective("cdpo", "DPO robust to flipped labels (label smoothing)", _with_reference(
        lambda p, r, a: cdpo_loss(p.chosen - r.chosen, p.rejected - r.rejected, a.beta, a.label_smoothing)),
        CdpoParams, data="pairs", needs_reference=True),
    Objective("ipo", "identity preference optimisation (squared margin; resists overfitting)", _with_reference(
        lambda p, r, a: ipo_loss(p.chosen_mean - r.chosen_mean, p.rejected_mean - r.rejected_mean, a.beta)),
        BetaParams, data="pairs", needs_reference=True),
    Objective("simpo", "reference-free, length-normalised preference loss with a margin", _reference_free(
        lambda p, a: simpo_loss(p.chosen_mean, p.rejected_mean, a.beta, a.gamma)), SimpoParams, data="pairs"),
    Objective("orpo", "reference-free SFT + odds-ratio preference loss", _reference_free(
        lambda p, a: orpo_loss(p.chosen_mean, p.rejected_mean, a.beta)), OrpoParams, data="pairs"),
    Objective("kto", "Kahneman-Tversky optimisation on unpaired completions rated good or bad", _kto, KtoParams,
              data="rated", needs_reference=True),
)
