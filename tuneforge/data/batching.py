"""Batches: padding examples into tensors, and the deterministic order of micro-batches in each epoch.

The order of an epoch is a pure function of (seed, epoch), so a resumed run only needs the step number
to continue with exactly the samples the uninterrupted run would have seen.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from tuneforge.data.dataset import TrainExample
from tuneforge.data.packing import first_fit_decreasing
from tuneforge.data.render import IGNORE_INDEX, Encoded

LENGTH_GROUP_FACTOR = 32  # micro-batches per length-sorted chunk; larger = less padding, less randomness


def to_device(batch: dict, device: torch.device) -> dict:
    """Every tensor of a batch on `device` (a no-op where it already is), inside lists of batches too (a
    meta-learning episode's support and query batches)."""
    def moved(value):
        return [to_device(v, device) for v in value] if isinstance(value, list) else value.to(device, non_blocking=True)
    return {k: moved(v) for k, v in batch.items()}


def model_device(model: torch.nn.Module) -> torch.device:
    """Where a model's weights are (batches built on the CPU must go there before its forward)."""
    return next(model.parameters()).device


def batch_sequences(examples: Sequence[TrainExample]) -> list[Encoded]:
    """The sequences of a micro-batch in the order objectives read them: every example's first sequence, then
    for preference pairs every rejected one, so sequence i < B is the chosen side of pair i and B + i its
    rejected side."""
    sides = {len(e.sequences) for e in examples}
    if len(sides) > 1:
        raise ValueError("a micro-batch mixes preference pairs and single examples")
    return [e.sequences[side] for side in range(sides.pop()) for e in examples]


def collate(examples: Sequence[TrainExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad every sequence to the longest. Padding has attention 0, label IGNORE_INDEX and sequence id -1;
    `sequence_ids` maps each token to its sequence's index in `batch_sequences`."""
    sequences = batch_sequences(examples)
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    labels = torch.full((len(sequences), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(sequences), width), dtype=torch.long)
    sequence_ids = torch.full((len(sequences), width), -1, dtype=torch.long)
    ends = []
    for row, item in enumerate(sequences):
        n = len(item)
        input_ids[row, :n] = torch.tensor(item.input_ids)
        labels[row, :n] = torch.tensor(item.labels)
        attention[row, :n] = 1
        sequence_ids[row, :n] = row
        ends.append(row * width + n - 1)
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention, "sequence_ids": sequence_ids,
            "sequence_ends": torch.tensor(ends), **_batch_facts(examples, sequences)}


def collate_packed(examples: Sequence[TrainExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Padding-free batch: the sequences packed first-fit-decreasing into rows no longer than the longest one.

    Position ids restart at 0 for every sequence and no attention mask is passed, so transformers builds a
    block-diagonal causal mask from the position ids: no sequence attends to another. Each sequence's first
    label is ignored, since the token before it belongs to another sequence. The loss equals the padded
    batch's (same tokens, same label count) with less padding computed.
    """
    sequences = batch_sequences(examples)
    rows = first_fit_decreasing([len(s) for s in sequences], capacity=max(len(s) for s in sequences))
    width = max(sum(len(sequences[i]) for i in row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    sequence_ids = torch.full((len(rows), width), -1, dtype=torch.long)
    ends = [0] * len(sequences)
    for index, row in enumerate(rows):
        offset = 0
        for i in row:
            item, n = sequences[i], len(sequences[i])
            input_ids[index, offset:offset + n] = torch.tensor(item.input_ids)
            labels[index, offset + 1:offset + n] = torch.tensor(item.labels[1:])
            positions[index, offset:offset + n] = torch.arange(n)
            sequence_ids[index, offset:offset + n] = i
            ends[i] = index * width + offset + n - 1
            offset += n
        positions[index, offset:] = torch.arange(width - offset)  # trailing padding: a sequence of its own
    return {"input_ids": input_ids, "labels": labels, "position_ids": positions, "sequence_ids": sequence_ids,
            "sequence_ends": torch.tensor(ends), **_batch_facts(examples, sequences)}


def collate_pairs_packed(examples: Sequence[TrainExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Padding-free preference pairs with the prompt computed once: each pair is laid out as prompt, chosen
    response, rejected response, and the pairs are packed first-fit-decreasing into rows.

    The chosen and rejected sequences share their prompt tokens, and under causal attention the prompt's
    hidden states do not depend on what follows, so computing them once gives the same log-probabilities
    (and, summed over both uses, the same gradients) as two separate sequences. A 4-D attention mask
    keeps the rejected response from seeing the chosen one and every pair from seeing another; position ids
    continue from the prompt in both responses. Because a response's first token is predicted from the
    prompt's last position, not from the token before it in the row, the batch lists each label's
    predicting position explicitly (`label_positions`, `label_targets`, `label_owner`).
    """
    count = len(examples)
    units = [_shared_prompt_unit(e) for e in examples]
    rows = first_fit_decreasing([u.length for u in units], capacity=max(u.length for u in units))
    width = max(sum(units[i].length for i in row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    allowed = torch.zeros((len(rows), width, width), dtype=torch.bool)
    label_positions: list[int] = []
    label_targets: list[int] = []
    label_owner: list[int] = []
    ends = [0] * (2 * count)
    for index, row in enumerate(rows):
        offset = 0
        for i in row:
            unit = units[i]
            unit.place(input_ids[index], positions[index], allowed[index], offset)
            for side, owner in ((0, i), (1, count + i)):
                ends[owner] = index * width + unit.last(side, offset)
            for side, owner in ((0, i), (1, count + i)):
                for predictor, target in unit.labels(side, offset):
                    label_positions.append(index * width + predictor)
                    label_targets.append(target)
                    label_owner.append(owner)
            offset += unit.length
        allowed[index, offset:, offset:] = torch.eye(width - offset, dtype=torch.bool)  # padding sees itself
    sequences = batch_sequences(examples)
    facts = _batch_facts(examples, sequences)
    facts["num_tokens"] = torch.tensor(sum(u.length for u in units))  # tokens computed; the prompt once per pair
    return {"input_ids": input_ids, "position_ids": positions, "attention_mask": allowed[:, None],
            "label_positions": torch.tensor(label_positions), "label_targets": torch.tensor(label_targets),
            "label_owner": torch.tensor(label_owner), "sequence_ends": torch.tensor(ends), **facts}


class _SharedPromptUnit:
    """One pair as prompt + chosen tail + rejected tail. The shared prompt stops before the first label of
    either side, so it holds no trained token."""

    def __init__(self, chosen: Encoded, rejected: Encoded):
        first = min(_first_label(chosen), _first_label(rejected))
        shared = 0
        while shared < first and chosen.input_ids[shared] == rejected.input_ids[shared]:
            shared += 1
        self.sides, self.shared = (chosen, rejected), shared
        self.length = shared + (len(chosen) - shared) + (len(rejected) - shared)

    def _start(self, side: int, offset: int) -> int:
        """Row index of the side's first token after the shared prompt."""
        return offset + self.shared + (len(self.sides[0]) - self.shared if side else 0)

    def place(self, input_ids: torch.Tensor, positions: torch.Tensor, allowed: torch.Tensor, offset: int) -> None:
        prompt = slice(offset, offset + self.shared)
        input_ids[prompt] = torch.tensor(self.sides[0].input_ids[:self.shared])
        positions[prompt] = torch.arange(self.shared)
        allowed[prompt, prompt] = torch.ones(self.shared, self.shared, dtype=torch.bool).tril()
        for side, sequence in enumerate(self.sides):
            start, n = self._start(side, offset), len(sequence) - self.shared
            tail = slice(start, start + n)
            input_ids[tail] = torch.tensor(sequence.input_ids[self.shared:])
            positions[tail] = torch.arange(self.shared, len(sequence))
            allowed[tail, prompt] = True
            allowed[tail, tail] = torch.ones(n, n, dtype=torch.bool).tril()

    def last(self, side: int, offset: int) -> int:
        """Row index of the side's last token."""
        return self._start(side, offset) + len(self.sides[side]) - self.shared - 1

    def labels(self, side: int, offset: int) -> list[tuple[int, int]]:
        """(row index of the predicting position, target id) for every trained token of one side."""
        sequence, start = self.sides[side], self._start(side, offset)
        row_of = lambda t: offset + t if t < self.shared else start + t - self.shared  # noqa: E731
        return [(row_of(t - 1), sequence.labels[t]) for t in range(1, len(sequence))
                if sequence.labels[t] != IGNORE_INDEX]


def _shared_prompt_unit(example: TrainExample) -> _SharedPromptUnit:
    if example.rejected is None:
        raise ValueError("collate_pairs_packed needs preference pairs")
    return _SharedPromptUnit(example.encoded, example.rejected)


def _first_label(sequence: Encoded) -> int:
    return next((i for i, label in enumerate(sequence.labels) if label != IGNORE_INDEX), len(sequence))


def _batch_facts(examples: Sequence[TrainExample], sequences: Sequence[Encoded]) -> dict[str, torch.Tensor]:
    return {"sample_ids": torch.tensor([e.sample_id for e in examples]),
            "num_examples": torch.tensor(len(examples)), "num_sequences": torch.tensor(len(sequences)),
            "num_tokens": torch.tensor(sum(len(s) for s in sequences))}


def count_label_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Tokens whose next-token prediction is trained (labels shifted by one, as the loss uses them); a labelled
    batch counts its own (one per text, or the tagged words)."""
    if "num_label_tokens" in batch:
        return int(batch["num_label_tokens"])
    if "label_targets" in batch:
        return int(batch["label_targets"].numel())
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def epoch_micro_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int | str,
                        group_by_length: bool, shuffle: bool = True) -> list[list[int]]:
    """Indices of every micro-batch of one epoch, shuffled by (seed, epoch) unless `shuffle` is off.

    With length grouping, the epoch is cut into chunks of LENGTH_GROUP_FACTOR batches; each chunk is
    sorted by length before batching (less padding), and the batches are shuffled again.
    """
    rng = random.Random(f"{seed}:{epoch}")
    order = list(range(len(lengths)))
    if shuffle:
        rng.shuffle(order)
    if not group_by_length:
        return [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
    chunk = batch_size * LENGTH_GROUP_FACTOR
    batches = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start: start + chunk], key=lambda i: lengths[i], reverse=True)
        batches.extend(part[i: i + batch_size] for i in range(0, len(part), batch_size))
    if shuffle:
        rng.shuffle(batches)
    return batches


class StepPlan:
    """Which micro-batches of in-memory examples make up each optimizer step, across epochs; indexable by global
    step. A streamed dataset's plan (`data.stream.StreamPlan`) answers the same questions."""

    def __init__(self, examples: Sequence[TrainExample], batch_size: int, grad_accum: int, seed: int,
                 group_by_length: bool, shuffle: bool = True):
        self.examples, self.batch_size, self.grad_accum = examples, batch_size, grad_accum
        self.lengths = [len(e) for e in examples]
        self.seed, self.group_by_length, self.shuffle = seed, group_by_length, shuffle
        micro = -(-len(self.lengths) // batch_size)
        self.steps_per_epoch = max(1, -(-micro // grad_accum))
        self._cache: dict[int, list[list[int]]] = {}

    def total_steps(self, epochs: float, max_steps: int | None) -> int:
        return max_steps if max_steps else max(1, round(epochs * self.steps_per_epoch))

    def window(self, step: int) -> list[list[TrainExample]]:
        """The micro-batches of optimizer step `step` (0-based)."""
        epoch, index = divmod(step, self.steps_per_epoch)
        if epoch not in self._cache:
            self._cache = {epoch: epoch_micro_batches(self.lengths, self.batch_size, self.seed, epoch,
                                                      self.group_by_length, self.shuffle)}
        micro = self._cache[epoch]
        return [[self.examples[i] for i in batch] for batch in micro[index * self.grad_accum:
                                                                     (index + 1) * self.grad_accum]]

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def position(self) -> dict | None:
        """What a checkpoint keeps to continue the data where it stopped: nothing, the order being a function of
        the step."""
        return None

    def restore(self, step: int, position: dict | None) -> None:
        """Continue at `step` (a resume)."""
