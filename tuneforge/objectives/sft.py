"""Supervised fine-tuning: next-token cross-entropy on the trained (label) tokens only."""

from __future__ import annotations

import torch

from tuneforge.models.parts import label_token_nll
from tuneforge.objectives.base import LossContext, LossOutput, Objective


def sft_loss(model, batch: dict[str, torch.Tensor], ctx: LossContext) -> LossOutput:
    """Summed NLL over the micro-batch divided by the label tokens of the whole accumulation window."""
    nll, _ = label_token_nll(model, batch)
    return LossOutput(nll / max(ctx.num_label_tokens, 1))


OBJECTIVE = Objective("sft", "next-token cross-entropy on completion / assistant tokens", sft_loss)
