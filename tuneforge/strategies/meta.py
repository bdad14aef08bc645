"""Meta-learning through the one training loop: an outer step's window is a meta-batch of episodes
(`data.episodes`), one micro-batch per task, and the loss of an episode is a surrogate whose gradient is that task's
outer gradient (`metalearning.task_gradient`: Reptile, FOMAML or MAML) and whose value is the task's query loss
after adapting. The loop then does what it does for every objective — the outer optimizer's step (`train.optimizer`
at `train.lr`, its schedule and clipping), logging, held-out evaluation, checkpoints and resume — and, the episodes
being a function of the seed and the step, a resumed run trains the episodes the killed one would have."""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import torch

from tuneforge.data.batching import count_label_tokens
from tuneforge.objectives.base import LossContext, LossOutput, Objective
from tuneforge.strategies.metalearning import functional_loss, task_gradient, trainable


def meta_objective(base: Objective, algorithm: str, inner_lr: float) -> Objective:
    """`base` (an objective on plain examples: sft) meta-learned with `algorithm` and inner SGD rate `inner_lr`."""
    if base.data != "sft":
        raise ValueError(f"meta-learning trains objectives on plain examples (sft); {base.name} trains on {base.data}")
    return Objective(f"{algorithm}:{base.name}", f"{base.summary}, meta-learned with {algorithm}",
                     partial(episode_loss, base=base, algorithm=algorithm, inner_lr=inner_lr), base.params,
                     data="episodes")


def episode_loss(model: torch.nn.Module, batch: dict, ctx: LossContext, *, base: Objective, algorithm: str,
                 inner_lr: float) -> LossOutput:
    """One task's share of the outer step: its outer gradient, divided by the meta-batch's size (the loop sums the
    episodes), carried by a surrogate whose value is the task's query loss after adapting."""
    def loss(m: torch.nn.Module, sub: dict) -> torch.Tensor:  # the base loss of one batch, normalised by its own
        sub_ctx = replace(ctx, num_label_tokens=count_label_tokens(sub), num_examples=int(sub["num_examples"]))
        return base.loss(m, sub, sub_ctx).loss

    theta = trainable(model)
    gradient, losses = task_gradient(algorithm, functional_loss(model, loss), theta, batch["support"],
                                     batch["query"], inner_lr)
    tasks = max(ctx.num_examples, 1)
    carried = sum((p * gradient[name]).sum() for name, p in theta.items())
    surrogate = (carried - carried.detach() + losses["query_loss_after"]) / tasks
    return LossOutput(surrogate, {"query_loss_before": losses["query_loss_before"] / tasks,
                                  "query_loss_after": losses["query_loss_after"] / tasks})
