"""From dataset specs to encoded training examples: read, validate, mix, tokenize, apply the length policy.

`load_examples` needs no tokenizer and validates every record, so a run stops on bad data before any
model is loaded. `encode_examples` then tokenizes with the over-long policy and the drop-fraction guard.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
import statistics
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from tuneforge.config import DataConfig, DatasetSpec
from tuneforge.data import cache, trees
from tuneforge.data.formats import Example, detect_format, normalise, record_object, shown_keys, unused_keys
from tuneforge.data.render import Encoded, control_lookalikes, encode_blocks, end_of_turn_ids, use_chat_template
from tuneforge.data.sources import RawRecord, read_records
from tuneforge.errors import DataError


@dataclass(frozen=True)
class TrainExample:
    """A tokenized example with a stable id (its position in the mixed dataset) and its origin. A preference
    pair holds the chosen conversation in `encoded` and the rejected one in `rejected`."""

    sample_id: int
    example: Example
    encoded: Encoded
    truncated: bool = False
    rejected: Encoded | None = None

    @property
    def sequences(self) -> tuple[Encoded, ...]:
        return (self.encoded,) if self.rejected is None else (self.encoded, self.rejected)

    def __len__(self) -> int:
        """Tokens over all of the example's sequences (what a batch of it costs)."""
        return sum(len(s) for s in self.sequences)

    @property
    def num_label_tokens(self) -> int:
        return sum(len(s.labels) - 1 - s.labels[1:].count(-100) for s in self.sequences if s.labels)


@dataclass
class EncodeStats:
    examples: int = 0
    kept: int = 0
    truncated: int = 0
    dropped: int = 0
    lengths: list[int] = field(default_factory=list)
    label_tokens: int = 0
    missing_end_of_turn: list[str] = field(default_factory=list)
    # where a record quotes a control token's spelling (kept as plain text): (location, the spelling)
    control_lookalikes: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> dict:
        lengths = sorted(self.lengths) or [0]
        return {
            "examples": self.examples, "kept": self.kept, "truncated": self.truncated, "dropped": self.dropped,
            "tokens": sum(self.lengths), "label_tokens": self.label_tokens,
            "length_min": lengths[0], "length_mean": round(statistics.fmean(lengths), 1),
            "length_p50": lengths[len(lengths) // 2], "length_p95": lengths[min(len(lengths) - 1,
                                                                                  int(len(lengths) * 0.95))],
            "length_max": lengths[-1], "missing_end_of_turn": len(self.missing_end_of_turn),
            "control_lookalikes": len(self.control_lookalikes),
        }


def load_examples(specs: Sequence[DatasetSpec], seed: int, resolve: Callable[[str], str] = str, *,
                  bad_records: str = "error", notes: list[str] | None = None, sampling: str = "proportional",
                  temperature: float = 2.0, reader: RecordReader | None = None) -> list[Example]:
    """Read and validate every record of every dataset, then form the weighted mixture (by task, as `sampling`
    says, where the entries name tasks). `bad_records: skip` leaves out records that cannot be read or are
    malformed; what was skipped, and keys no format reads, are appended to `notes` for the caller to show.
    `reader` reads each record instead of the language-model formats (a data kind's: a classifier's labels)."""
    notes = [] if notes is None else notes
    parts = [_load_one(spec, resolve(spec.path), bad_records, notes, reader) for spec in specs]
    if len(parts) == 1 and specs[0].weight == 1.0 and specs[0].task is None:
        return parts[0]
    rng = random.Random(seed)
    weights = task_weights(specs, [len(p) for p in parts], sampling, temperature)
    mixed: list[Example] = []
    for spec, examples, weight in zip(specs, parts, weights, strict=True):
        tagged = [dataclasses.replace(e, task=spec.task) for e in examples] if spec.task else examples
        mixed.extend(_scale(tagged, weight, rng))
    return mixed


def task_weights(specs: Sequence[DatasetSpec], sizes: Sequence[int], sampling: str = "proportional",
                 temperature: float = 2.0) -> list[float]:
    """Each dataset's size multiplier. Datasets without a task keep their `weight`. With tasks, a task's share
    of the mixture (its datasets' weighted size n_t over all) becomes p_t ∝ n_t (proportional), 1 (uniform) or
    n_t^(1/T) (temperature, as in multilingual and multi-task training: Arivazhagan et al., 2019,
    https://arxiv.org/abs/1907.05019), the mixture keeping its total size; a task's datasets scale together."""
    weighted = [spec.weight * size for spec, size in zip(specs, sizes, strict=True)]
    per_task: dict[str, float] = {}
    for spec, n in zip(specs, weighted, strict=True):
        if spec.task:
            per_task[spec.task] = per_task.get(spec.task, 0.0) + n
    if not per_task or sampling == "proportional":
        return [spec.weight for spec in specs]
    # n^(1/T) relative to the largest task's, in logs: a small T (0.001) would overflow a float
    largest = max(math.log(n) for n in per_task.values() if n > 0) if any(per_task.values()) else 0.0
    mass = {"uniform": lambda n: 1.0,
            "temperature": lambda n: math.exp((math.log(n) - largest) / temperature) if n > 0 else 0.0}[sampling]
    total, norm = sum(per_task.values()), sum(mass(n) for n in per_task.values())
    scale = {task: total * mass(n) / norm / n if n > 0 else 0.0 for task, n in per_task.items()}
    return [spec.weight * scale[spec.task] if spec.task else spec.weight for spec in specs]


class RecordReader(Protocol):
    """How a data kind reads its records (RawRecord -> its record, or a located DataError), its format's name, and
    the keys of a record it does not read."""

    format: str

    def __call__(self, record: RawRecord): ...

    def unused(self, record: RawRecord) -> list[str]: ...


def _load_one(spec: DatasetSpec, path: str, bad_records: str, notes: list[str],
              reader: RecordReader | None = None) -> list[Example]:
    entry = EntryReader(spec, bad_records, reader)
    examples = [e for e in map(entry.read, read_records(path, spec.split)) if e is not None]
    examples += trees.conversations(entry.tree_rows, spec.tree) if entry.tree_rows else []
    notes += entry.notes(path if not examples else examples[0].source)
    if not examples:
        skipped = len(entry.skipped)
        problem = f"contains no usable records ({skipped} skipped)" if skipped else "contains no records"
        raise DataError(path, None, None, problem, "add records, or remove this dataset entry")
    return examples


class EntryReader:
    """Reads the records of one `data.train`/`data.test` entry into examples: its columns mapped, its format
    detected at the first record, bad records refused or skipped as `data.bad_records` says. It keeps what was
    skipped and the first record's keys that no format reads, for the notes, and a message tree's rows (a tree spans
    records: its conversations are built once all are read)."""

    def __init__(self, spec: DatasetSpec, bad_records: str, reader: RecordReader | None = None):
        self.spec, self.bad_records, self.reader = spec, bad_records, reader
        self.fmt = None if spec.format == "auto" else spec.format
        self.skipped: list[str] = []
        self.unused: tuple | None = None
        self.tree_rows: list = []

    def read(self, record: RawRecord) -> Example | None:
        """The record's example; None for a skipped record or a message tree's row."""
        try:
            record = mapped_columns(record, self.spec.columns)
            if self.reader is not None:
                self.fmt = self.reader.format
                example = self.reader(record)
            else:
                # a message tree first: its rows have a text, but train only inside their tree
                self.fmt = self.fmt or ("oasst" if trees.is_tree(record_object(record)) else detect_format(record))
                if self.fmt == "oasst":
                    self.tree_rows += trees.rows_of(record)
                    return None
                example = normalise(record, self.fmt)
        except DataError as exc:
            if self.bad_records != "skip":
                raise
            self.skipped.append(str(exc).splitlines()[0])
            return None
        keys = self.reader.unused(record) if self.reader is not None else unused_keys(record, self.fmt)
        if self.unused is None and keys:
            self.unused = (record.where, keys)
        return example

    def notes(self, shown: str) -> list[str]:
        """What was skipped (data.bad_records: skip) and keys no format reads, said of the file `shown`."""
        said = []
        if self.skipped:
            said.append(f"warning: {shown}: skipped {len(self.skipped)} bad records (data.bad_records: skip), first: "
                        + "; ".join(self.skipped[:3]))
        if self.unused:
            said.append(f"warning: {shown}:{self.unused[0]}: keys {self.unused[1]} are not read by the {self.fmt} "
                        "format (first such record); if one holds what should be trained, map it with `columns:` or "
                        "set `format:`")
        return said


def mapped_columns(record: RawRecord, columns: dict[str, str]) -> RawRecord:
    """The record with the file's column names renamed to the fields tuneforge reads (`columns:`)."""
    if not columns or not isinstance(record.data, dict):
        return record
    data = dict(record.data)
    for field_name, column in columns.items():
        if column not in data:
            raise DataError(record.path, record.where, column, f"no such column (columns: {{{field_name}: "
                            f"{column}}}); the record has {shown_keys(data)}",
                            "fix the dataset's `columns:` mapping")
        data[field_name] = data.pop(column)
    return RawRecord(record.path, record.where, data)


def _scale(examples: list[Example], weight: float, rng: random.Random) -> list[Example]:
    """A mixture weight multiplies a dataset's size: whole repeats, then a seeded sample of the remainder."""
    whole, fraction = divmod(weight, 1.0)
    scaled = examples * int(whole)
    scaled += rng.sample(examples, round(fraction * len(examples)))
    return scaled


def encode_examples(examples: Sequence[Example], tokenizer, cfg: DataConfig, *,
                    apply_drop_guard: bool = True) -> tuple[list[TrainExample], EncodeStats]:
    """Tokenize with labels; apply `cfg.overlong`; fail if more than `cfg.max_drop_fraction` is dropped."""
    chat = use_chat_template(tokenizer, cfg.template)
    stops = end_of_turn_ids(tokenizer)
    stats = EncodeStats(examples=len(examples))
    kept: list[TrainExample] = []
    # each example's sequences in turn: a preference pair's (or a rated example's KL side's) rejected one after it
    sequences = [s for e in examples for s in ((e, e.rejected_side()) if e.rejected else (e,))]
    encodings = itertools.chain.from_iterable(_encode_cached(sequences, tokenizer, chat, cfg))
    for sample_id, example in enumerate(examples):  # each block as it is encoded, while the next is tokenized
        encoded = next(encodings)
        rejected = next(encodings) if example.rejected else None
        quoted = control_lookalikes([*example.messages, *example.rejected, {"content": example.text}], tokenizer)
        if quoted:
            stats.control_lookalikes.append((example.location, quoted[0]))
        for sequence in (encoded, rejected):
            if sequence is not None:
                _note_missing_end(example, sequence, stops, stats)
        item = _apply_length_policy(sample_id, example, encoded, rejected, cfg, stats)
        if item is not None:
            kept.append(item)
            stats.lengths.append(len(item))
            stats.label_tokens += item.num_label_tokens
    if next(encodings, None) is not None:  # run the encoder to its end, where it writes the cache entry
        raise AssertionError("more encodings than sequences")
    stats.kept = len(kept)
    if apply_drop_guard:
        check_drop_fraction(stats, cfg, examples)
    return kept, stats


def _encode_cached(examples: Sequence[Example], tokenizer, chat: bool, cfg: DataConfig) -> Iterator[list[Encoded]]:
    """The encodings, a block at a time: the cache entry whole, or the encoder's blocks, each packed for the cache
    as it comes (the entry is written once all are)."""
    if not cfg.cache:
        yield from encode_blocks(examples, tokenizer, chat=chat, train_on_prompt=cfg.train_on_prompt)
        return
    key = cache.cache_key(examples, tokenizer, chat=chat, train_on_prompt=cfg.train_on_prompt)
    found = cache.load(key)
    if found is not None and len(found) == len(examples):
        yield found
        return
    writer = cache.Writer(key)
    for block in encode_blocks(examples, tokenizer, chat=chat, train_on_prompt=cfg.train_on_prompt):
        writer.add(block)
        yield block
    writer.finish()


def _note_missing_end(example: Example, encoded: Encoded, stops: set[int], stats: EncodeStats) -> None:
    if any(encoded.input_ids[i] not in stops for i in encoded.turn_ends) or not encoded.turn_ends:
        stats.missing_end_of_turn.append(example.location)


def _apply_length_policy(sample_id: int, example: Example, encoded: Encoded, rejected: Encoded | None,
                         cfg: DataConfig, stats: EncodeStats) -> TrainExample | None:
    """max_seq_len bounds each sequence; a pair is kept, cut or dropped as a whole."""
    longest = max(len(encoded), len(rejected) if rejected is not None else 0)
    if longest <= cfg.max_seq_len:
        return TrainExample(sample_id, example, encoded, rejected=rejected)
    if cfg.overlong == "error":
        raise DataError(example.source, example.where, None,
                        f"example has {longest} tokens, more than data.max_seq_len={cfg.max_seq_len}",
                        "raise data.max_seq_len, or set data.overlong to truncate or drop")
    if cfg.overlong == "drop":
        stats.dropped += 1
        return None
    cut = [_cut(s, cfg.max_seq_len) for s in (encoded, rejected) if s is not None]
    if any(all(label == -100 for label in s.labels[1:]) for s in cut):
        stats.dropped += 1  # nothing left to learn from: every trained token was past the cut
        return None
    stats.truncated += 1
    return TrainExample(sample_id, example, cut[0], truncated=True, rejected=cut[1] if len(cut) > 1 else None)


def _cut(encoded: Encoded, length: int) -> Encoded:
    return Encoded(encoded.input_ids[:length], encoded.labels[:length],
                   tuple(i for i in encoded.turn_ends if i < length))


def check_drop_fraction(stats: EncodeStats, cfg: DataConfig, examples: Sequence[Example]) -> None:
    # under truncate, an example is dropped only when its prompt alone fills max_seq_len (nothing trained is left)
    if cfg.overlong == "truncate":
        why, other = "their prompt alone fills", "shorten those prompts"
    else:
        why, other = "they are longer than", "set data.overlong: truncate"
    if not stats.kept:
        where = examples[0].source if examples else "data"
        raise DataError(where, None, None, f"no example is left to train on: {why} data.max_seq_len="
                        f"{cfg.max_seq_len}", f"raise data.max_seq_len (now {cfg.max_seq_len})")
    fraction = stats.dropped / max(stats.examples, 1)
    if fraction > cfg.max_drop_fraction:
        raise DataError(examples[0].source, None, None,
                        f"{stats.dropped} of {stats.examples} examples ({fraction:.1%}) would be dropped: {why} "
                        f"data.max_seq_len={cfg.max_seq_len}; more than data.max_drop_fraction="
                        f"{cfg.max_drop_fraction:.1%}",
                        f"raise data.max_seq_len, {other}, or raise data.max_drop_fraction")
