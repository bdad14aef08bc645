"""Reward modelling: the language model with a scalar head, trained on preference pairs with the
Bradley–Terry loss (Ouyang et al., 2022, https://arxiv.org/abs/2203.02155). A response's reward is the
head applied to the final hidden state of its last token, the position that has read all of it. Any
method chooses what of the body trains; the head always trains, and is saved as reward_head.safetensors.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tuneforge.models.parts import attach_scalar_head, final_hidden_states, load_scalar_head, save_scalar_head
from tuneforge.objectives.base import LossContext, LossOutput, Objective, ObjectiveParams
from tuneforge.objectives.preference import bradley_terry_loss, pair_output

HEAD_FILE = "reward_head.safetensors"


def attach_head(model) -> None:
    attach_scalar_head(model, "reward_head")


def sequence_rewards(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """One reward per sequence of the batch (in `batch_sequences` order)."""
    hidden = final_hidden_states(model, batch)
    return model.reward_head(hidden.flatten(0, 1)[batch["sequence_ends"]].float()).squeeze(-1)


def reward_loss(model, batch: dict[str, torch.Tensor], ctx: LossContext) -> LossOutput:
    rewards = sequence_rewards(model, batch)
    pairs = int(batch["num_examples"])
    chosen, rejected = rewards[:pairs], rewards[pairs:]
    return pair_output(bradley_terry_loss(chosen, rejected), chosen, rejected, ctx)


def save_head(model, run_dir) -> None:
    save_scalar_head(model, "reward_head", Path(run_dir) / HEAD_FILE)


def load_head(model, run_dir) -> None:
    load_scalar_head(model, "reward_head", Path(run_dir) / HEAD_FILE)


OBJECTIVE = Objective("reward", "reward model: scalar head, Bradley-Terry loss on preference pairs", reward_loss,
                      ObjectiveParams, data="pairs", attach=attach_head, save=save_head, load=load_head)
