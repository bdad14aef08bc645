"""Types shared by all objectives."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol

import torch

from tuneforge.data.kinds import DataKind, get_kind
from tuneforge.objectives.params import ObjectiveParams


@dataclass(frozen=True)
class LossContext:
    """What a loss needs beyond the batch. The counts cover the whole accumulation window, so summed
    micro-batch losses equal the loss of one big batch: `num_label_tokens` normalises token losses (SFT),
    `num_examples` per-example ones (a preference pair is one example). `reference` opens the frozen
    reference model (the adapter disabled, or a frozen copy) for objectives that compare against it; `teacher`
    gives a distillation teacher's distribution at a batch's trained positions."""

    num_label_tokens: int
    num_examples: int = 0
    params: ObjectiveParams = field(default_factory=ObjectiveParams)
    reference: Callable[[], AbstractContextManager] | None = None
    teacher: Teacher | None = None  # distillation's teacher: its next-token distribution at the trained positions


@dataclass(frozen=True)
class TeacherTokens:
    """A teacher's next-token log-probabilities (at temperature 1) at each trained position of a batch, in the
    order `models.parts` gives the label positions: over the whole vocabulary (`ids` None: [positions, vocab]),
    or over its top-k tokens (`ids` and `logprobs` [positions, k]; the loss adds the rest of the vocabulary as
    one more entry, whose log-mass at the loss's temperature is `rest` [positions] when the teacher knew it), or,
    `sampled`, over k tokens priority-sampled from its distribution at the loss's temperature, `logprobs` then an
    unbiased estimate of that distribution at them."""

    logprobs: torch.Tensor
    ids: torch.Tensor | None = None
    rest: torch.Tensor | None = None
    sampled: bool = False


class Teacher(Protocol):
    def __call__(self, batch: dict[str, torch.Tensor]) -> TeacherTokens: ...


@dataclass(frozen=True)
class Frozen:
    """The frozen models a phase's losses may consult: the reference (the model before training, for DPO and
    the KL terms of online RL) and a teacher (distillation)."""

    reference: Callable[[], AbstractContextManager] | None = None
    teacher: Teacher | None = None


@dataclass
class LossOutput:
    loss: torch.Tensor
    # each value is this micro-batch's share of the window's figure, so summing over micro-batches gives it
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Objective:
    name: str
    summary: str
    loss: Callable[..., LossOutput]  # (model, batch, ctx) -> LossOutput
    params: type[ObjectiveParams] = ObjectiveParams
    # the kind of record it trains on, by name (`data.kinds.KINDS`: sft, pairs, rated, prompts, teacher_answers,
    # labels); the engine asks the kind (`kind`) how to read, check, encode and batch them
    data: str = "sft"
    needs_reference: bool = False
    # an objective that trains parts of its own (a reward head): attach them to the model before training,
    # and save / load them next to what the method saves
    attach: Callable | None = None  # (model) -> None
    save: Callable | None = None  # (model, run_dir) -> None
    load: Callable | None = None  # (model, run_dir) -> None
    # an online objective: the advantage of each sampled completion from the rewards [prompts, group]
    advantages: Callable | None = None  # (rewards, params) -> advantages
    # an online objective's no-grad work on a window's sampled batches before its updates (old log-probs,
    # values, per-token advantages), written into the batches; returns figures to log
    prepare: Callable | None = None  # (model, batches, ctx) -> dict[str, float]

    @property
    def kind(self) -> DataKind:
        return get_kind(self.data)
