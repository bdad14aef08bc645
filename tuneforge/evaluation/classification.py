"""Scores of a classification or regression model on labelled test data: scikit-learn's accuracy, macro and
micro F1, per-class precision and recall and the confusion matrix; seqeval's entity-level precision, recall
and F1 for BIO tags; mean squared error and Pearson's r for regression. The held-out loss is the plain
cross-entropy (or squared error) per example or per tagged word, whatever label smoothing training used."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from tuneforge.config import IGNORE_INDEX
from tuneforge.data.kinds.labels import LabeledExample, LabelSet


def scores(examples: Sequence[LabeledExample], logits: Sequence[torch.Tensor], total_loss: float,
           labels: LabelSet) -> tuple[dict, list[dict]]:
    """The task's metrics (percentages, but for the loss, MSE and r) and one sample per example."""
    if labels.task == "regression":
        return regression_scores(examples, logits, total_loss)
    if labels.task == "token_classification":
        return tagging_scores(examples, logits, total_loss, labels)
    return class_scores(examples, logits, total_loss, labels)


def class_scores(examples: Sequence[LabeledExample], logits: Sequence[torch.Tensor], total_loss: float,
                 labels: LabelSet) -> tuple[dict, list[dict]]:
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    truth = [e.target for e in examples]
    predicted = [int(x.argmax()) for x in logits]
    classes = list(range(len(labels.names)))
    precision, recall, f1, support = precision_recall_fscore_support(truth, predicted, labels=classes,
                                                                     zero_division=0)
    result = {
        "loss": total_loss / max(len(examples), 1),
        "accuracy": 100 * accuracy_score(truth, predicted),
        "f1": 100 * f1_score(truth, predicted, labels=classes, average="macro", zero_division=0),
        "f1_micro": 100 * f1_score(truth, predicted, labels=classes, average="micro", zero_division=0),
        "precision": 100 * float(precision.mean()), "recall": 100 * float(recall.mean()),
        "per_class": {name: {"precision": 100 * float(p), "recall": 100 * float(r), "f1": 100 * float(f),
                             "support": int(s)}
                      for name, p, r, f, s in zip(labels.names, precision, recall, f1, support, strict=True)},
        "confusion": {"labels": list(labels.names),
                      "matrix": confusion_matrix(truth, predicted, labels=classes).tolist()},
    }
    samples = [{"input": e.example.shown(), "reference": labels.names[e.target], "prediction": labels.names[p],
                "probabilities": _probabilities(x, labels)} for e, x, p in zip(examples, logits, predicted,
                                                                               strict=True)]
    return result, samples


def _probabilities(logits: torch.Tensor, labels: LabelSet) -> dict[str, float]:
    return {name: round(float(p), 4) for name, p in zip(labels.names, logits.softmax(-1), strict=True)}


def word_tags(example: LabeledExample, logits: torch.Tensor, labels: LabelSet) -> list[str]:
    """The predicted tag of each word: its first sub-token's; a word cut off by truncation is predicted O."""
    firsts = [i for i, t in enumerate(example.target) if t != IGNORE_INDEX]
    tags = [labels.names[int(logits[i].argmax())] for i in firsts]
    return tags + ["O"] * (len(example.example.words) - len(tags))


def tagging_scores(examples: Sequence[LabeledExample], logits: Sequence[torch.Tensor], total_loss: float,
                   labels: LabelSet) -> tuple[dict, list[dict]]:
    from seqeval.metrics import classification_report, f1_score, precision_score, recall_score

    truth = [list(e.example.tags) for e in examples]
    predicted = [word_tags(e, x, labels) for e, x in zip(examples, logits, strict=True)]
    words = sum(len(t) for t in truth)
    hits = sum(a == b for t, p in zip(truth, predicted, strict=True) for a, b in zip(t, p, strict=True))
    tagged = sum(e.num_label_tokens for e in examples)
    report = classification_report(truth, predicted, output_dict=True, zero_division=0)
    result = {
        "loss": total_loss / max(tagged, 1),
        "accuracy": 100 * hits / max(words, 1),  # per word
        "f1": 100 * f1_score(truth, predicted, zero_division=0),  # entity-level, micro over entities
        "precision": 100 * precision_score(truth, predicted, zero_division=0),
        "recall": 100 * recall_score(truth, predicted, zero_division=0),
        "per_class": {kind: {"precision": 100 * v["precision"], "recall": 100 * v["recall"],
                             "f1": 100 * v["f1-score"], "support": int(v["support"])}
                      for kind, v in report.items() if " avg" not in kind},
    }
    samples = [{"input": e.example.shown(), "reference": " ".join(t), "prediction": " ".join(p)}
               for e, t, p in zip(examples, truth, predicted, strict=True)]
    return result, samples


def regression_scores(examples: Sequence[LabeledExample], logits: Sequence[torch.Tensor],
                      total_loss: float) -> tuple[dict, list[dict]]:
    from scipy.stats import pearsonr
    from sklearn.metrics import mean_squared_error

    truth = [float(e.target) for e in examples]
    predicted = [float(x.reshape(-1)[0]) for x in logits]
    constant = len(set(truth)) < 2 or len(set(predicted)) < 2
    r = float("nan") if constant else float(pearsonr(truth, predicted).statistic)
    result = {"loss": total_loss / max(len(examples), 1), "mse": float(mean_squared_error(truth, predicted)),
              "pearson": r if math.isfinite(r) else 0.0}
    samples = [{"input": e.example.shown(), "reference": t, "prediction": round(p, 4)}
               for e, t, p in zip(examples, truth, predicted, strict=True)]
    return result, samples
