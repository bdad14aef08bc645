"""Types shared by all objectives."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class LossContext:
    """What a loss needs beyond the batch. `num_label_tokens` counts the whole accumulation window, so
    summed micro-batch losses equal the loss of one big batch (token-normalised accumulation)."""

    num_label_tokens: int


@dataclass
class LossOutput:
    loss: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)  # sums over the micro-batch, e.g. nll_sum


@dataclass(frozen=True)
class Objective:
    name: str
    summary: str
    loss: Callable[..., LossOutput]
