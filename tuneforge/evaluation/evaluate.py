"""Evaluate a model on examples by generation: greedy answers scored against references. (Held-out loss of
any objective is `tuneforge.engine.heldout.heldout_scores`.)"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch

from tuneforge.data.formats import Example
from tuneforge.data.render import end_of_turn_ids, prompt_ids_for_generation
from tuneforge.evaluation.generate import generate_all
from tuneforge.evaluation.metrics import GENERATION_METRICS


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
