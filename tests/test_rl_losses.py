"""The reward-model, KTO and online-RL formulas against values computed by hand."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

from tuneforge.config import IGNORE_INDEX
from tuneforge.objectives.preference import bradley_terry_loss, kto_loss
from tuneforge.objectives.rl import (
    clipped_policy_loss,
    clipped_value_loss,
    generalized_advantages,
    group_advantages,
    leave_one_out_advantages,
    per_sequence,
    token_rewards,
)


def t(*values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_bradley_terry():
    assert bradley_terry_loss(t(2.0), t(0.5)).item() == pytest.approx(-math.log(sigmoid(1.5)))
    assert bradley_terry_loss(t(2.0), t(0.5), margin=1.0).item() == pytest.approx(-math.log(sigmoid(0.5)))


def test_kto_desirable_and_undesirable():
    # ratios 0.8 (desirable) and -0.4 (undesirable), KL reference point 0.3, beta 2, weights 1 and 1.5
    losses = kto_loss(t(0.8, -0.4), torch.tensor([True, False]), 0.3, beta=2.0, undesirable_weight=1.5)
    assert losses[0].item() == pytest.approx(1 - sigmoid(2.0 * (0.8 - 0.3)))
    assert losses[1].item() == pytest.approx(1.5 * (1 - sigmoid(2.0 * (0.3 + 0.4))))
    clamped = kto_loss(t(0.8), torch.tensor([True]), -5.0, beta=2.0)  # a negative KL estimate counts as 0
    assert clamped.item() == pytest.approx(1 - sigmoid(1.6))


def test_grpo_and_rloo_advantages():
    rewards = t(1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0).reshape(2, 4)
    # group 1: mean 0.5, sample std sqrt(1/3); group 2: mean 0.75, sample std 0.5
    a = 0.5 / math.sqrt(1 / 3)
    expected = t(a, -a, -a, a, 0.5, 0.5, 0.5, -1.5).reshape(2, 4)
    torch.testing.assert_close(group_advantages(rewards, eps=0.0), expected)
    torch.testing.assert_close(group_advantages(rewards, scale=False), rewards - rewards.mean(1, keepdim=True))
    # RLOO: r_i minus the mean of the other three
    rloo = leave_one_out_advantages(rewards)
    assert rloo[0].tolist() == pytest.approx([1 - 1 / 3, 0 - 2 / 3, 0 - 2 / 3, 1 - 1 / 3])
    assert rloo[1].tolist() == pytest.approx([1 - 2 / 3, 1 - 2 / 3, 1 - 2 / 3, 0 - 1.0])
    assert group_advantages(t(1.0, 1.0).reshape(1, 2)).abs().max() == 0  # a group that all agrees teaches nothing


def test_gae_by_hand():
    rewards, values = t(0.0, 0.0, 1.0).reshape(1, 3), t(0.5, 0.6, 0.7).reshape(1, 3)
    gamma, lam = 0.9, 0.8
    d2 = 1.0 - 0.7
    d1 = 0.0 + gamma * 0.7 - 0.6
    d0 = 0.0 + gamma * 0.6 - 0.5
    a2 = d2
    a1 = d1 + gamma * lam * a2
    a0 = d0 + gamma * lam * a1
    advantages, returns = generalized_advantages(rewards, values, gamma=gamma, lam=lam)
    assert advantages[0].tolist() == pytest.approx([a0, a1, a2])
    assert returns[0].tolist() == pytest.approx([a0 + 0.5, a1 + 0.6, a2 + 0.7])


def test_ppo_clipped_losses_by_hand():
    old = t(0.0, 0.0, 0.0)
    new = t(math.log(1.5), math.log(0.5), math.log(1.1))  # ratios 1.5, 0.5, 1.1
    adv = t(1.0, -2.0, 3.0)
    loss, clipped = clipped_policy_loss(new, old, adv, clip=0.2)
    # min(1.5*1, 1.2*1) = 1.2; min(0.5*-2, 0.8*-2) = -1.6; min(1.1*3, 1.1*3) = 3.3
    assert loss.tolist() == pytest.approx([-1.2, 1.6, -3.3])
    assert clipped.tolist() == [True, True, False]
    value_loss = clipped_value_loss(t(1.0, 0.0), t(0.5, 0.5), t(2.0, 0.0), clip=0.2)
    # first: unclipped (1-2)^2=1, clipped 0.7 -> (0.7-2)^2=1.69 -> max 1.69; second: 0 vs (0.3)^2=0.09
    assert value_loss.tolist() == pytest.approx([0.5 * 1.69, 0.5 * 0.09])


def test_ppo_token_rewards_by_hand():
    """−β·(log π − log π_ref) per token, plus the score at each sequence's last token (rows padded with 0)."""
    kl = t(0.1, 0.2, 0.0, 0.3, 0.0, 0.0).reshape(2, 3)
    rewards = token_rewards(t(1.0, -1.0), kl.clone(), torch.tensor([2, 1]), beta=0.5)
    torch.testing.assert_close(rewards, t(-0.05, -0.1 + 1.0, 0.0, -0.15 - 1.0, 0.0, 0.0).reshape(2, 3))


def test_per_sequence_round_trip():
    values = t(1.0, 2.0, 3.0, 4.0, 5.0)
    owner = torch.tensor([1, 0, 1, 1, 0])  # tokens of two sequences, interleaved; order kept within each
    rows, back = per_sequence(values, owner, 3)
    assert rows.tolist() == [[2.0, 5.0, 0.0], [1.0, 3.0, 4.0], [0.0, 0.0, 0.0]]
    assert back(rows * 10).tolist() == [10.0, 20.0, 30.0, 40.0, 50.0]


def test_ppo_loss_value_and_window_preparation(tokenizer):
    """prepare_ppo: GAE over each completion's tokens with the KL-penalised reward, whitened over the window;
    ppo_loss at the sampling policy: the policy term is −mean(A) and the value term vf_coef·½(V − R)²."""
    from tests.conftest import lora_tiny
    from tuneforge.data.batching import collate_packed
    from tuneforge.data.dataset import TrainExample
    from tuneforge.data.formats import Example
    from tuneforge.data.render import Encoded
    from tuneforge.objectives import LossContext
    from tuneforge.objectives.rl import PpoParams, _attach_value_head, ppo_loss, prepare_ppo

    model = lora_tiny(tokenizer, seed=3)
    _attach_value_head(model)
    torch.nn.init.normal_(model.value_head.weight, std=0.1)
    example = Example("t", 1, messages=({"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}),
                      prompt_turns=1)
    rolled = [TrainExample(0, example, Encoded([1, 5, 9, 4], [IGNORE_INDEX, 5, 9, 4], (3,))),
              TrainExample(0, example, Encoded([1, 7, 2], [IGNORE_INDEX, 7, 2], (2,)))]
    batch = collate_packed(rolled, tokenizer.pad_token_id) | {"rewards": t(1.0, 0.0)}
    params = PpoParams(beta=0.1, gamma=1.0, lam=1.0, vf_coef=0.5)

    @contextlib.contextmanager
    def reference():
        with model.disable_adapter():
            yield model

    ctx = LossContext(num_label_tokens=5, params=params, reference=reference)
    with torch.no_grad():
        figures = prepare_ppo(model, [batch], ctx)
    # λ = γ = 1: the return of a token is the sum of the rewards from it to the end (the score minus β·KL)
    kl = batch["old_logps"] - _reference(model, batch)
    owner = torch.tensor([0, 0, 0, 1, 1])
    step = -0.1 * kl + torch.tensor([0, 0, 1.0, 0, 0])
    expected_returns = torch.stack([step[i:owner.eq(owner[i]).nonzero().max() + 1].sum() for i in range(5)])
    torch.testing.assert_close(batch["returns"], expected_returns, atol=1e-5, rtol=0)
    raw = expected_returns - batch["old_values"]
    torch.testing.assert_close(batch["advantages"], (raw - raw.mean()) / (raw.std() + 1e-8), atol=1e-4, rtol=0)
    assert figures["kl"] == pytest.approx(float(kl.mean()), abs=1e-6)
    out = ppo_loss(model, batch, ctx)
    value_term = 0.5 * 0.5 * ((batch["old_values"] - batch["returns"]) ** 2).sum() / 5
    assert float(out.loss) == pytest.approx(float(-batch["advantages"].sum() / 5 + value_term), abs=1e-5)
    assert out.metrics["clip_fraction"] == 0.0


def _reference(model, batch):
    from tuneforge.models.parts import label_token_logps

    with torch.no_grad(), model.disable_adapter():
        return label_token_logps(model, batch)[0]
