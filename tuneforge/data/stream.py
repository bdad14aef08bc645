"""Training data larger than memory (`data.streaming: true`): read a block of records at a time as training goes,
never the whole file.

The records of `data.train` (its files one after another) are cut into blocks of `data.shuffle_buffer` records.
Each block is read, checked, tokenized and cut into micro-batches shuffled by (seed, epoch, block): memory holds
one block, and the order is a pure function of the data and the seed. Where training is — the block's first
record (a file and a point in it: a byte offset for JSON Lines, rows read for CSV and Parquet), the block's
number and how many of its micro-batches were trained — goes into every checkpoint, so a resume after a kill -9
reads that block again and continues with the micro-batch the killed run would have trained next.

A streamed dataset's size is not known before it is read, so `train.max_steps` says how long to train; the
epochs pass as the files end. Shuffling mixes records within a block: a file sorted by source or length should be
shuffled once beforehand (or its block made larger)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tuneforge.config import DataConfig, DatasetSpec, TrainConfig
from tuneforge.data.batching import StepPlan, epoch_micro_batches
from tuneforge.data.dataset import EntryReader, RecordReader, TrainExample
from tuneforge.data.formats import Example
from tuneforge.data.sources import read_from, resolve_source
from tuneforge.errors import DataError

# a training file at least this large is not read whole by `data check` (it samples its first block), and
# training it without data.streaming is warned about
HUGE_BYTES = 1 << 30


@dataclass
class Cursor:
    """Where a stream is: the block being trained (its file and the point in it where the block starts, its number
    in the epoch, how many records of the epoch come before it) and how many of its micro-batches were taken."""

    epoch: int = 0
    file: int = 0
    point: tuple[int, int] = (0, 0)
    block: int = 0
    ordinal: int = 0
    taken: int = 0

    @classmethod
    def of(cls, saved: dict | None) -> Cursor:
        return cls() if not saved else cls(**{**saved, "point": tuple(saved["point"])})


class RecordStream:
    """The training records of `data.train`, read a block at a time as they are needed, each block checked by
    the data kind (`check`). `first` is the first block: what is checked before any model loads and what
    `data check` shows."""

    def __init__(self, specs: Sequence[DatasetSpec], resolve: Callable[[str], str], cfg: DataConfig,
                 reader: RecordReader | None, check: Callable[[list], None]):
        self.specs, self.paths = list(specs), [resolve(spec.path) for spec in specs]
        self.block_size, self.bad_records, self.reader = cfg.shuffle_buffer, cfg.bad_records, reader
        self.check = check
        self.notes: list[str] = []
        self.first, self._after_first = self.read_block(Cursor(), self.notes)
        if not self.first:
            raise DataError(self.paths[0], None, None, "contains no usable records", "add records")

    def files(self) -> list[Path]:
        return [resolve_source(path) for path in self.paths]

    def read_block(self, cursor: Cursor, notes: list[str] | None = None) -> tuple[list[Example], Cursor]:
        """The examples of the block at `cursor` (empty at the end of the files), and where the next block starts."""
        if cursor.file == 0 and cursor.point == (0, 0) and hasattr(self, "first"):  # read and checked already
            return self.first, dataclasses.replace(self._after_first, epoch=cursor.epoch)
        examples: list[Example] = []
        file, point = cursor.file, cursor.point
        while len(examples) < self.block_size and file < len(self.paths):
            spec, entry = self.specs[file], EntryReader(self.specs[file], self.bad_records, self.reader)
            ended = True
            for after, record in read_from(self.paths[file], point):
                point, example = after, entry.read(record)
                if entry.tree_rows:
                    raise DataError(record.path, record.where, None, "an OpenAssistant message tree spans records, "
                                    "so its conversations cannot be built a block at a time",
                                    f"set data.streaming: false for {spec.path}, or write the tree's conversations "
                                    "as messages records")
                if example is not None:
                    examples.append(example)
                if len(examples) == self.block_size:
                    ended = False
                    break
            if notes is not None:  # the first block's, said before training (later blocks' are not said)
                notes += entry.notes(self.paths[file])
            if ended:
                file, point = file + 1, (0, 0)
        if examples:
            self.check(examples)
        after = dataclasses.replace(cursor, file=file, point=point, block=cursor.block + 1,
                                    ordinal=cursor.ordinal + len(examples), taken=0)
        return examples, after


class StreamedExamples:
    """A `RecordStream`'s examples, tokenized a block at a time by `encode` (the length policy applied); `first` is
    its first block's."""

    def __init__(self, records: RecordStream, encode: Callable[[list[Example]], list[TrainExample]],
                 first: list[TrainExample]):
        self.records, self.encode, self.first = records, encode, first

    def plan(self, cfg: TrainConfig) -> StreamPlan:
        return StreamPlan(self, cfg)


class StreamPlan:
    """`StepPlan`'s questions for a streamed dataset: each step's micro-batches, read in order, and where the data
    is read to (`position`, kept by every checkpoint; `restore` continues from one)."""

    def __init__(self, stream: StreamedExamples, cfg: TrainConfig):
        self.stream, self.cfg = stream, cfg
        self.restore(0, None)

    def total_steps(self, epochs: float, max_steps: int | None) -> int:
        if max_steps is None:
            raise ValueError("a streamed dataset trains for train.max_steps")  # the config requires it
        return max_steps

    def restore(self, step: int, position: dict | None) -> None:
        self.cursor, self.step, self.epoch = Cursor.of(position), step, 0
        self._load(self.cursor)

    def position(self) -> dict:
        return dataclasses.asdict(self.cursor)

    def window(self, step: int) -> list[list[TrainExample]]:
        if step != self.step:
            raise ValueError(f"a stream is read in order: step {step} asked after step {self.step - 1}")
        self.step, self.epoch = step + 1, self.cursor.epoch
        return [self._next_micro_batch() for _ in range(self.cfg.grad_accum)]

    def epoch_of(self, step: int) -> int:
        return self.epoch

    def _next_micro_batch(self) -> list[TrainExample]:
        new_epoch = False
        while self.cursor.taken >= len(self.micro):
            if self.after.file < len(self.stream.records.paths):
                self._load(self.after)
            elif new_epoch:  # a whole pass over the files found nothing to train
                raise DataError(self.stream.records.paths[0], None, None, "no example is left to train on",
                                "check the data and data.max_seq_len")
            else:
                new_epoch = True
                self._load(Cursor(epoch=self.cursor.epoch + 1))
        batch = self.micro[self.cursor.taken]
        self.cursor.taken += 1
        return batch

    def _load(self, cursor: Cursor) -> None:
        """Read, tokenize and cut into micro-batches the block at `cursor`, skipping the micro-batches it took."""
        examples, self.after = self.stream.records.read_block(cursor)
        encoded = [dataclasses.replace(e, sample_id=cursor.ordinal + e.sample_id)
                   for e in (self.stream.encode(examples) if examples else [])]
        cfg = self.cfg
        order = epoch_micro_batches([len(e) for e in encoded], cfg.batch_size, cfg.seed,
                                    f"{cursor.epoch}:{cursor.block}", cfg.group_by_length, cfg.shuffle)
        self.micro = [[encoded[i] for i in batch] for batch in order]
        self.cursor = cursor


def step_plan(examples: Sequence[TrainExample] | StreamedExamples, cfg: TrainConfig) -> StepPlan | StreamPlan:
    """The plan of optimizer steps over the training data: in memory, or the data's own (streamed data, a
    meta-learning run's episodes)."""
    if hasattr(examples, "plan"):
        return examples.plan(cfg)
    return StepPlan(examples, cfg.batch_size, cfg.grad_accum, cfg.seed, cfg.group_by_length, cfg.shuffle)
