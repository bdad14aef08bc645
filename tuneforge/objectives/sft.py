"""Supervised fine-tuning: next-token cross-entropy on the trained (label) tokens only."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tuneforge.models.parts import label_logits, label_token_nll
from tuneforge.objectives.base import LossContext, LossOutput, Objective
from tuneforge.objectives.params import SmoothedParams


def sft_loss(model, batch: dict[str, torch.Tensor], ctx: LossContext) -> LossOutput:
    """Summed NLL over the micro-batch divided by the label tokens of the whole accumulation window. With label
    smoothing ε the loss is the smoothed cross-entropy, and `nll` the plain one (what perplexity reads)."""
    smoothing = getattr(ctx.params, "label_smoothing", 0.0)
    if not smoothing:
        nll, _ = label_token_nll(model, batch)
        return LossOutput(nll / max(ctx.num_label_tokens, 1))
    logits, targets, _ = label_logits(model, batch)
    count = max(ctx.num_label_tokens, 1)
    nll = F.cross_entropy(logits, targets, reduction="sum")
    smoothed = F.cross_entropy(logits, targets, reduction="sum", label_smoothing=smoothing)
    return LossOutput(smoothed / count, {"nll": float(nll) / count})


OBJECTIVE = Objective("sft", "next-token cross-entropy on completion / assistant tokens", sft_loss, SmoothedParams)
