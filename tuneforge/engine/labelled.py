"""The classification tasks' share of a phase (`task:` sequence_classification, token_classification,
regression): the head a label set needs, and held-out scores from one forward pass over the test data
(`evaluation.classification` turns the logits into metrics). Their records are the `labels` data kind's."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext

import torch

from tuneforge.data.batching import model_device, to_device
from tuneforge.data.kinds.labels import (
    LabeledExample,
    LabelSet,
    collate_labeled,
)
from tuneforge.evaluation import classification
from tuneforge.models.load import Head
from tuneforge.objectives.classify import class_cross_entropy, head_logits, squared_error


def head_of(labels: LabelSet | None) -> Head | None:
    """The model head a label set needs (None: a language model)."""
    return Head(labels.task, labels.names) if labels is not None else None


@torch.no_grad()
def predict(model, examples: Sequence[LabeledExample], pad_id: int, batch_size: int = 32,
            autocast: Callable[[], AbstractContextManager] = nullcontext) -> tuple[list[torch.Tensor], float]:
    """Each example's fp32 logits ([classes], [its tokens, classes] or [1]) in the given order, and the summed
    plain loss over the set (cross-entropy, or squared error)."""
    was_training = model.training
    model.eval()
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]))  # less padding
    out: list = [None] * len(examples)
    total = 0.0
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start: start + batch_size]
            batch = to_device(collate_labeled([examples[i] for i in chunk], pad_id), model_device(model))
            with autocast():
                logits = head_logits(model, batch)
            labels = batch["labels"]
            total += float(squared_error(logits, labels) if labels.is_floating_point()
                           else class_cross_entropy(logits, labels))
            for row, index in enumerate(chunk):
                out[index] = logits[row, :len(examples[index])].cpu() if labels.dim() == 2 else logits[row].cpu()
    finally:
        model.train(was_training)
    return out, total


def labelled_scores(model, examples: Sequence[LabeledExample], labels: LabelSet, pad_id: int, batch_size: int,
                    autocast: Callable[[], AbstractContextManager] = nullcontext) -> tuple[dict, list[dict]]:
    """The task's metrics on `examples` and one sample (input, reference, prediction) per example."""
    if not examples:
        return {}, []
    logits, total = predict(model, examples, pad_id, batch_size, autocast)
    return classification.scores(examples, logits, total, labels)
