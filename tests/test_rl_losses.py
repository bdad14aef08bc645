"""The reward-model, KTO and online-RL formulas against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from tuneforge.objectives.preference import bradley_terry_loss, kto_loss
from tuneforge.objectives.rl import (
    clipped_policy_loss,
    clipped_value_loss,
    generalized_advantages,
    group_advantages,
    leave_one_out_advantages,
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
