"""Evaluate a model on examples: loss/perplexity and generation metrics."""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import nullcontext

import torch

from tuneforge.data.batching import collate
from tuneforge.data.dataset import TrainExample
from tuneforge.data.formats import Example
from tuneforge.data.render import end_of_turn_ids, prompt_ids_for_generation
from tuneforge.evaluation.generate import generate_all
from tuneforge.evaluation.metrics import GENERATION_METRICS
from tuneforge.models.parts import label_token_nll


@torch.no_grad()
def heldout_loss(model, examples: Sequence[TrainExample], pad_id: int, batch_size: int,
                 autocast=nullcontext) -> dict[str, float]:
    """Token-weighted mean NLL of the label tokens, and its perplexity."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    ordered = sorted(examples, key=len)
    for start in range(0, len(ordered), batch_size):
        with autocast():
            nll, n = label_token_nll(model, collate(ordered[start: start + batch_size], pad_id))
        total, count = total + float(nll), count + n
    model.train(was_training)
    loss = total / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}


@torch.no_grad()
def generation_metrics(model, tokenizer, examples: Sequence[Example], metrics: Sequence[str], *, chat: bool,
                       batch_size: int, max_new_tokens: int, autocast=nullcontext) -> tuple[dict, list[dict]]:
    """Greedy-decode each example's last assistant turn and score it against the reference."""
    pairs = [prompt_ids_for_generation(e, tokenizer, chat=chat) for e in examples]
    pairs = [p for p in pairs if p is not None]
    wanted = [m for m in metrics if m in GENERATION_METRICS]
    if not pairs or not wanted:
        return {}, []
    was_training = model.training
    model.eval()
    with autocast():
        predictions = generate_all(model, tokenizer, [p for p, _ in pairs], batch_size=batch_size,
                                   max_new_tokens=max_new_tokens, stop_ids=end_of_turn_ids(tokenizer))
    model.train(was_training)
    references = [r for _, r in pairs]
    scores: dict[str, float] = {}
    for name in wanted:
        scores.update(GENERATION_METRICS[name](predictions, references))
    samples = [{"prediction": p, "reference": r} for p, r in zip(predictions, references, strict=True)]
    return scores, samples
