"""The classification tasks' share of a phase (`task:` sequence_classification, token_classification,
regression): their data read, checked and tokenized for the model's own special tokens, and their held-out
scores from one forward pass over the test data (`evaluation.classification` turns the logits into metrics)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext

import torch

from tuneforge.config import LoadedConfig
from tuneforge.data.batching import model_device, to_device
from tuneforge.data.labels import (
    LabeledExample,
    LabelSet,
    collate_labeled,
    encode_labeled,
    split_off_test,
)
from tuneforge.engine.console import RunConsole
from tuneforge.errors import ConfigError
from tuneforge.evaluation import classification
from tuneforge.models.load import Head
from tuneforge.objectives.classify import class_cross_entropy, head_logits, squared_error


def head_of(labels: LabelSet | None) -> Head | None:
    """The model head a label set needs (None: a language model)."""
    return Head(labels.task, labels.names) if labels is not None else None


def labelled_splits(loaded: LoadedConfig, splits: dict[str, list]) -> tuple[list, list, LabelSet]:
    """(train records, test records, label set): the test set held out of the training data when
    `data.test_fraction` asks, and every test label checked against those training taught."""
    cfg = loaded.run
    train, test = splits["train"], splits.get("test", [])
    if cfg.data.test_fraction:
        if test:
            raise ConfigError(f"{loaded.where('data', 'test_fraction')}: data.test_fraction holds out test data, "
                              "but data.test gives some too\n  fix: remove one of them")
        train, test = split_off_test(train, cfg.data.test_fraction, cfg.data.stratify, cfg.train.seed,
                                     loaded.where("data", "test_fraction"))
    elif cfg.data.stratify:
        raise ConfigError(f"{loaded.where('data', 'stratify')}: data.stratify applies to the split "
                          "data.test_fraction makes\n  fix: set data.test_fraction, or remove data.stratify")
    labels = LabelSet.of(cfg.task, train, cfg.data.label_names)
    labels.check(test)
    return train, test, labels


def encode_splits(train: list, test: list, labels: LabelSet, tokenizer, max_len: int, console: RunConsole | None
                  ) -> tuple[list[LabeledExample], list[LabeledExample], dict]:
    encoded, stats = encode_labeled(train, tokenizer, labels, max_len)
    test_encoded, test_stats = encode_labeled(test, tokenizer, labels, max_len)
    summary = stats.summary()
    if console:
        shown = ", ".join(f"{k} {v}" for k, v in list(summary["classes"].items())[:8])
        console.info(f"data: {len(encoded)} training examples ({summary['truncated']} truncated to "
                     f"{max_len} tokens), {summary['tokens']} tokens; {len(test_encoded)} test examples; "
                     + (f"labels: {shown}" if labels.task != "regression" else "regression targets"))
    return encoded, test_encoded, {"train": summary, "test": test_stats.summary() if test else None}


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
