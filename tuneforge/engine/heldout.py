"""Held-out evaluation of any objective: its loss and metrics over a test set, without gradients.

The whole test set is one accumulation window (the context's counts cover every example), so the
summed micro-batch values are the test set's token- or pair-weighted means, the same quantities the
training log shows per step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import nullcontext

import torch

from tuneforge.data.batching import model_device, to_device
from tuneforge.data.dataset import TrainExample
from tuneforge.objectives import LossContext, Objective
from tuneforge.objectives.base import Frozen, ObjectiveParams


@torch.no_grad()
def heldout_scores(model, objective: Objective, params: ObjectiveParams, examples: Sequence[TrainExample],
                   pad_id: int, batch_size: int, autocast=nullcontext,
                   frozen: Frozen | None = None) -> dict[str, float]:
    """The objective's mean loss and metrics on `examples` (plus perplexity for SFT)."""
    was_training = model.training
    model.eval()
    ordered = sorted(examples, key=len)
    ctx = LossContext(num_label_tokens=sum(e.num_label_tokens for e in ordered), num_examples=len(ordered),
                      params=params, reference=frozen and frozen.reference,
                      teacher=frozen and frozen.teacher)
    scores: dict[str, float] = {"loss": 0.0}
    device = model_device(model)
    try:
        for start in range(0, len(ordered), batch_size):
            batch = to_device(objective.kind.collate(ordered[start: start + batch_size], pad_id), device)
            with autocast():
                out = objective.loss(model, batch, ctx)
            scores["loss"] += float(out.loss)
            for key, value in out.metrics.items():
                scores[key] = scores.get(key, 0.0) + value
    finally:
        model.train(was_training)
    if objective.kind.perplexity:  # of the data's own tokens (a distillation loss also has the teacher's term)
        scores["perplexity"] = math.exp(min(scores.get("nll", scores["loss"]), 50.0))
    return scores
