"""Exact match by teacher forcing: whether greedy decoding would write an example's trained tokens (its answer and
the end-of-turn token) exactly, read off one forward pass instead of a decoding loop. Greedy decoding reproduces the
reference iff at every trained position the reference token is the most likely next token given the reference
before it; at the first position where it is not, greedy decoding leaves the reference. (A different tokenization
of the same text would also match as text; such a decode is counted wrong here, so the figure is a lower bound of
greedy generation's exact match, equal to it whenever the model writes the reference's own tokens.)"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext

import torch

from tuneforge.data.batching import collate, model_device, to_device
from tuneforge.data.dataset import TrainExample
from tuneforge.models.parts import label_logits


def forced_exact_match(model: torch.nn.Module, examples: Sequence[TrainExample], pad_id: int, *, batch_size: int = 16,
                       autocast: Callable[[], AbstractContextManager] = nullcontext) -> list[bool]:
    """Per example, whether every trained token is the model's argmax given the reference before it."""
    hits: list[bool] = []
    device, training = model_device(model), model.training
    model.eval()
    try:
        for start in range(0, len(examples), batch_size):
            batch = to_device(collate(list(examples[start:start + batch_size]), pad_id), device)
            with torch.no_grad(), autocast():
                logits, targets, trained = label_logits(model, batch)
            right = torch.ones_like(trained)
            right[trained] = logits.argmax(-1) == targets
            hits += right.all(dim=1).tolist()
    finally:
        model.train(training)
    return hits
