"""Classification and regression heads' losses: cross-entropy over the classes of each text (or of each
word's first sub-token), with optional label smoothing; mean squared error for regression. The model is any
Hugging Face `...ForSequenceClassification` / `...ForTokenClassification`; the loss is computed here, from its
logits, so that it is normalised over the whole accumulation window like every other objective's."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tuneforge.config import IGNORE_INDEX
from tuneforge.models.parts import unpacked_encoder_output
from tuneforge.objectives.base import LossContext, LossOutput, Objective
from tuneforge.objectives.params import ObjectiveParams, SmoothedParams

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


def head_logits(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The head's outputs: [batch, classes], [batch, tokens, classes], or [batch, 1] for regression, in fp32.
    A packed batch (`collate_labeled_packed`) runs the encoder on its packed rows and the head on the texts."""
    inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
    if "unpack_index" not in batch:
        return model(**inputs).logits.float()
    # a label per text: BERT's pooler reads each text's [CLS] alone, so the last layer computes only that
    with unpacked_encoder_output(model, batch["unpack_index"], first_token_only=batch["labels"].dim() == 1):
        return model(**inputs).logits.float()


def class_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """Summed cross-entropy of the targets (IGNORE_INDEX skipped), logits [..., classes]; with `smoothing` ε the
    target puts 1 - ε on its class and ε spread over all classes."""
    return F.cross_entropy(logits.flatten(0, -2), targets.flatten(), ignore_index=IGNORE_INDEX,
                           reduction="sum", label_smoothing=smoothing)


def squared_error(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed squared error; predictions [batch, 1] or [batch]."""
    return F.mse_loss(predictions.reshape(-1), targets.float(), reduction="sum")


def classify_loss(model, batch: dict[str, torch.Tensor], ctx: LossContext) -> LossOutput:
    """Mean over the window's examples (a class per text) or labelled tokens (a tag per word)."""
    logits = head_logits(model, batch)
    smoothing = getattr(ctx.params, "label_smoothing", 0.0)
    per_token = batch["labels"].dim() == 2
    count = ctx.num_label_tokens if per_token else ctx.num_examples
    summed = class_cross_entropy(logits, batch["labels"], smoothing)
    hits = (logits.argmax(-1) == batch["labels"]).sum()
    return LossOutput(summed / max(count, 1), {"accuracy": float(hits) / max(count, 1)})


def regress_loss(model, batch: dict[str, torch.Tensor], ctx: LossContext) -> LossOutput:
    return LossOutput(squared_error(head_logits(model, batch), batch["labels"]) / max(ctx.num_examples, 1))


OBJECTIVES = (
    Objective("classify", "cross-entropy over a classification head's classes (per text or per word)",
              classify_loss, SmoothedParams, data="labels"),
    Objective("regress", "mean squared error of a one-output head (regression)", regress_loss, ObjectiveParams,
              data="labels"),
)
