"""Labelled records (`labels`), the data kind of the classification tasks (`task:` sequence_classification,
token_classification, regression): read and check each record, the label set, tokenizing for an encoder, the
batch (padded or packed), and what `data check` shows.

A record is a text (and an optional second text, for pairs such as NLI) with a label, or a list of words with
one BIO tag per word (the CoNLL / Hugging Face `tokens` + `ner_tags` layout). Every check runs before any
model loads and names the record's file:line: a missing label, a regression target that is not a number, tags
that do not line up with the words, a test label that training never saw. The label set is read from the
training data (or named by `data.label_names` when the labels are integers) and saved with the run.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from tuneforge.config import IGNORE_INDEX, DataConfig, LoadedConfig
from tuneforge.data.kinds.base import DataKind, EncodedSplits, SplitReport
from tuneforge.data.packing import first_fit_decreasing
from tuneforge.data.render import Encoded
from tuneforge.data.sources import RawRecord
from tuneforge.errors import ConfigError, DataError

TASKS = ("sequence_classification", "token_classification", "regression")
TEXT_KEYS = ("text", "sentence", "sentence1", "premise")  # the first text: IMDB, SST-2, GLUE pairs, NLI
PAIR_KEYS = ("text_pair", "sentence2", "hypothesis")  # an optional second text
LABEL_KEYS = ("label", "labels", "score", "target")
WORD_KEYS = ("tokens", "words")
TAG_KEYS = ("tags", "ner_tags", "labels")
USED_KEYS = {*TEXT_KEYS, *PAIR_KEYS, *LABEL_KEYS, *WORD_KEYS, *TAG_KEYS}
TAG_PATTERN = re.compile(r"^(O|[BI]-\S+)$")
LABELS_FILE = "labels.json"  # a classification run's label set, in its run directory


@dataclass(frozen=True)
class Labeled:
    """One labelled record and where it came from: a text (and a second text) with a label, or words with
    one tag each. Labels are kept as the data spells them (a string; numbers as their text), a regression
    target as a float."""

    source: str
    where: int | str
    text: str = ""
    text_pair: str | None = None
    label: str | float | None = None
    words: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    task: str | None = None  # the task its dataset was named for (`data.train: [{path, task}]`)

    @property
    def location(self) -> str:
        return f"{self.source}:{self.where}"

    def shown(self) -> str:
        """The input as a person reads it (samples, chat)."""
        if self.words:
            return " ".join(self.words)
        return self.text if self.text_pair is None else f"{self.text} || {self.text_pair}"

    @property
    def truth(self) -> str | float | tuple[str, ...]:
        return self.tags if self.words else self.label


def _first(data: dict, keys: Sequence[str]) -> str | None:
    return next((k for k in keys if k in data and data[k] is not None), None)


class LabelledReader:
    """The record reader of a classification task: RawRecord -> Labeled, or a located DataError; and the keys of a
    record it does not read (reported once per file)."""

    format = "labelled"

    def __init__(self, task: str, label_names: Sequence[str] | None = None):
        self.task, self.label_names = task, label_names

    def __call__(self, record: RawRecord) -> Labeled:
        if self.task == "token_classification":
            return _tagged(record, self.label_names)
        return _text_with_label(record, self.task, self.label_names)

    def unused(self, record: RawRecord) -> list[str]:
        return sorted(str(k) for k in record.data if k not in USED_KEYS and k not in ("id", "idx", "source")
                      and not str(k).startswith("column_"))  # a CoNLL file's other columns


def _require_object(record: RawRecord) -> dict:
    from tuneforge.data.formats import record_object

    return record_object(record)


def _text_with_label(record: RawRecord, task: str, label_names: Sequence[str] | None) -> Labeled:
    data = _require_object(record)
    text_key = _first(data, TEXT_KEYS)
    if text_key is None:
        raise DataError(record.path, record.where, "text", f"missing: a {task} record needs a text "
                        f"({' or '.join(TEXT_KEYS)}) and a label", "add the text, or map your column with "
                        "`columns: {text: YOUR_COLUMN}` on the dataset entry")
    text = _string(record, text_key, data[text_key])
    pair_key = _first(data, PAIR_KEYS)
    pair = _string(record, pair_key, data[pair_key]) if pair_key else None
    label_key = next((k for k in LABEL_KEYS if k in data), None)
    if label_key is None or data[label_key] is None or data[label_key] == "":
        raise DataError(record.path, record.where, label_key or "label", "missing: every training and test "
                        f"record of task {task} needs a label", "add the label, or map your column with "
                        "`columns: {label: YOUR_COLUMN}`")
    value = data[label_key]
    label = _number(record, label_key, value) if task == "regression" else _class_name(record, label_key, value,
                                                                                          label_names)
    return Labeled(record.path, record.where, text=text, text_pair=pair, label=label)


def _string(record: RawRecord, key: str, value) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DataError(record.path, record.where, key, f"expected non-empty text, got {type(value).__name__}"
                        f"{'' if not isinstance(value, str) else ' (empty)'}", "give the text as a string")
    return value


def _number(record: RawRecord, key: str, value) -> float:
    """A regression target: a JSON number, or text that is one (CSV cells are text)."""
    try:
        number = float(value) if not isinstance(value, bool) and isinstance(value, int | float | str) else None
    except ValueError:
        number = None
    if number is None or not math.isfinite(number):
        raise DataError(record.path, record.where, key, f"a regression target must be a finite number, got "
                        f"{value!r}"[:200], "give the target as a number, e.g. 3.5")
    return number


def _class_name(record: RawRecord, key: str, value, label_names: Sequence[str] | None) -> str:
    """A class label as its name: strings as written, integers (and CSV text of them) as their digits, or the
    name `data.label_names` gives that index."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise DataError(record.path, record.where, key, f"a class label must be a string or an integer, got "
                        f"{type(value).__name__}", "give one label per record, e.g. \"positive\" or 2")
    name = str(value).strip()
    if label_names and re.fullmatch(r"-?\d+", name):
        index = int(name)
        if not 0 <= index < len(label_names):
            raise DataError(record.path, record.where, key, f"label {index} has no name in data.label_names "
                            f"({len(label_names)} names)", "add its name to data.label_names, or fix the label")
        return label_names[index]
    if label_names and name not in label_names:
        raise DataError(record.path, record.where, key, f"label {name!r} is not in data.label_names",
                        f"use one of {list(label_names)[:20]}, or add it to data.label_names")
    return name


def _tagged(record: RawRecord, label_names: Sequence[str] | None) -> Labeled:
    data = _require_object(record)
    word_key, tag_key = _first(data, WORD_KEYS), _first(data, TAG_KEYS)
    if word_key is None or tag_key is None:
        raise DataError(record.path, record.where, (tag_key and "tokens") or "tags", "missing: a token_classification "
                        "record needs its words (tokens) and one tag per word (tags or ner_tags)",
                        "give e.g. {\"tokens\": [\"Ada\", \"lives\", \"in\", \"Paris\"], \"tags\": [\"B-PER\", \"O\", "
                        "\"O\", \"B-LOC\"]}, or map your columns with `columns:`")
    words, tags = data[word_key], data[tag_key]
    if not isinstance(words, list) or not words or not all(isinstance(w, str) and w.strip() for w in words):
        raise DataError(record.path, record.where, word_key, "expected a non-empty list of non-empty words",
                        "give the sentence split into words, one string each")
    if not isinstance(tags, list) or len(tags) != len(words):
        count = len(tags) if isinstance(tags, list) else type(tags).__name__
        raise DataError(record.path, record.where, tag_key, f"the tags do not line up with the words: {count} "
                        f"tags for {len(words)} words", "give exactly one tag per word (O outside an entity)")
    names = tuple(_class_name(record, tag_key, tag, label_names) for tag in tags)
    bad = next((i for i, tag in enumerate(names) if not TAG_PATTERN.match(tag)), None)
    if bad is not None:
        raise DataError(record.path, record.where, tag_key, f"tag {names[bad]!r} of word {bad + 1} "
                        f"({words[bad]!r}) is not a BIO tag", "write O, B-TYPE or I-TYPE (e.g. B-PER); integer "
                        "tags need data.label_names")
    return Labeled(record.path, record.where, words=tuple(words), tags=names)


@dataclass(frozen=True)
class LabelSet:
    """The classes a classification run predicts, in the order of the head's outputs."""

    task: str
    names: tuple[str, ...] = ()

    @classmethod
    def of(cls, task: str, train: Sequence[Labeled], label_names: Sequence[str] | None = None) -> LabelSet:
        if task == "regression":
            return cls(task)
        if label_names:
            return cls(task, tuple(label_names))
        seen = {t for r in train for t in r.tags} if task == "token_classification" else {r.label for r in train}
        numeric = all(re.fullmatch(r"-?\d+", str(n)) for n in seen)
        ordered = sorted(seen, key=(lambda n: int(n)) if numeric else (lambda n: (n != "O", n)))
        if len(ordered) < 2 and task == "sequence_classification":
            raise DataError(train[0].source, "all records", "label", f"every training label is {ordered}; a "
                            "classifier needs at least two classes", "add records of the other classes")
        return cls(task, tuple(str(n) for n in ordered))

    def index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.names)}

    def as_json(self) -> dict:
        return {"task": self.task, "names": list(self.names)}

    def write(self, run_dir) -> None:
        from pathlib import Path

        (Path(run_dir) / LABELS_FILE).write_text(json.dumps(self.as_json(), indent=1))

    @classmethod
    def read(cls, run_dir) -> LabelSet:
        from pathlib import Path

        path = Path(run_dir) / LABELS_FILE
        try:
            data = json.loads(path.read_text())
            return cls(str(data["task"]), tuple(str(n) for n in data["names"]))
        except (OSError, ValueError, KeyError, TypeError):
            raise DataError(path, None, None, "missing or unreadable: a classification run keeps its label set "
                            "here", "use the whole run directory training wrote") from None

    def check(self, records: Sequence[Labeled]) -> None:
        """Every label of `records` (test data) is one the model can predict."""
        if self.task == "regression":
            return
        known = set(self.names)
        for record in records:
            for label in (record.tags if record.words else (record.label,)):
                if label not in known:
                    raise DataError(record.source, record.where, "tags" if record.words else "label",
                                    f"label {label!r} never occurs in the training data, so the model has no "
                                    f"output for it (it knows {sorted(known)[:20]})", "add training records "
                                    "with this label, fix the label, or list every class in data.label_names")


@dataclass(frozen=True)
class LabeledExample:
    """A tokenized labelled record: its input ids (and segment ids for a pair) and its target: a class index,
    a float, or one tag index per token (IGNORE_INDEX off a word's first sub-token)."""

    sample_id: int
    example: Labeled
    input_ids: tuple[int, ...]
    target: int | float | tuple[int, ...]
    token_type_ids: tuple[int, ...] | None = None
    truncated: bool = False

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_label_tokens(self) -> int:
        return sum(t != IGNORE_INDEX for t in self.target) if isinstance(self.target, tuple) else 1

    @property
    def sequences(self) -> tuple[Encoded, ...]:
        """As an LM example's sequences (the run's data fingerprint reads ids and labels)."""
        labels = self.target if isinstance(self.target, tuple) else (self.target,)
        return (Encoded(list(self.input_ids), list(labels), ()),)


@dataclass
class LabeledStats:
    examples: int = 0
    truncated: int = 0
    lengths: list[int] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    label_tokens: int = 0  # what the loss averages over: texts, or tagged words

    def summary(self) -> dict:
        lengths = sorted(self.lengths) or [0]
        return {"examples": self.examples, "kept": self.examples, "truncated": self.truncated, "dropped": 0,
                "tokens": sum(lengths), "label_tokens": self.label_tokens, "length_max": lengths[-1],
                "length_p50": lengths[len(lengths) // 2], "classes": dict(sorted(self.counts.items()))}


def encode_labeled(records: Sequence[Labeled], tokenizer, labels: LabelSet, max_len: int
                   ) -> tuple[list[LabeledExample], LabeledStats]:
    """Tokenize for the model (its special tokens added; a pair as the tokenizer joins two texts) and map each
    label to its index; longer inputs are cut to `max_len` tokens. A word's tag labels its first sub-token."""
    stats = LabeledStats(examples=len(records))
    if not records:
        return [], stats
    words = bool(records[0].words)
    if words:
        enc = tokenizer([list(r.words) for r in records], is_split_into_words=True, truncation=True,
                        max_length=max_len)
    else:
        pairs = [r.text_pair for r in records]
        enc = tokenizer([r.text for r in records], pairs if any(p is not None for p in pairs) else None,
                        truncation=True, max_length=max_len)
    index = labels.index()
    out = []
    for i, record in enumerate(records):
        ids = tuple(enc["input_ids"][i])
        types = tuple(enc["token_type_ids"][i]) if "token_type_ids" in enc else None
        if words:
            target, placed = _token_targets(enc.word_ids(i), record.tags, index)
            truncated = placed < len(record.words)
            stats.counts.update(record.tags)
        else:
            target = record.label if labels.task == "regression" else index[record.label]
            truncated = len(ids) >= max_len and _longer_than(tokenizer, record, max_len)
            if labels.task != "regression":
                stats.counts[record.label] += 1
        stats.truncated += truncated
        stats.lengths.append(len(ids))
        out.append(LabeledExample(i, record, ids, target, types, truncated))
        stats.label_tokens += out[-1].num_label_tokens
    return out, stats


def _token_targets(word_ids: list[int | None], tags: Sequence[str], index: dict[str, int]
                   ) -> tuple[tuple[int, ...], int]:
    """One target per token: the word's tag on its first sub-token, IGNORE_INDEX elsewhere; and how many words
    got a token (fewer than all when the input was cut)."""
    targets, previous, placed = [], None, 0
    for word in word_ids:
        if word is None or word == previous:
            targets.append(IGNORE_INDEX)
        else:
            targets.append(index[tags[word]])
            placed += 1
        previous = word
    return tuple(targets), placed


def _longer_than(tokenizer, record: Labeled, max_len: int) -> bool:
    full = tokenizer(record.text, record.text_pair, truncation=False)["input_ids"]
    return len(full) > max_len


def collate_labeled(examples: Sequence[LabeledExample], pad_id: int) -> dict:
    """Right-padded inputs and their targets: `labels` [batch] (class indices, or floats for regression) or
    [batch, tokens] (tag indices, IGNORE_INDEX on padding and on later sub-tokens)."""
    import torch

    width = max(len(e) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    types = torch.zeros((len(examples), width), dtype=torch.long)
    per_token = isinstance(examples[0].target, tuple)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long) if per_token else None
    for row, item in enumerate(examples):
        n = len(item)
        input_ids[row, :n] = torch.tensor(item.input_ids)
        attention[row, :n] = 1
        if item.token_type_ids is not None:
            types[row, :n] = torch.tensor(item.token_type_ids)
        if per_token:
            labels[row, :n] = torch.tensor(item.target)
    if not per_token:
        floats = isinstance(examples[0].target, float)
        labels = torch.tensor([e.target for e in examples], dtype=torch.float32 if floats else torch.long)
    batch = {"input_ids": input_ids, "attention_mask": attention, "labels": labels,
             "sample_ids": torch.tensor([e.sample_id for e in examples]),
             "num_examples": torch.tensor(len(examples)), "num_sequences": torch.tensor(len(examples)),
             "num_tokens": torch.tensor(sum(len(e) for e in examples)),
             "num_label_tokens": torch.tensor(sum(e.num_label_tokens for e in examples))}
    if any(e.token_type_ids is not None for e in examples):
        batch["token_type_ids"] = types
    return batch


PACK_WIDTH = 32  # tokens per packed row at least: short texts share a row, the attention per row stays small


def collate_labeled_packed(examples: Sequence[LabeledExample], pad_id: int) -> dict:
    """`collate_labeled`'s batch without its padding: the texts packed first-fit-decreasing into rows of at
    least PACK_WIDTH tokens (or the longest text), each attending only to itself (a 4-D block-diagonal additive mask),
    positions restarting at 0. `unpack_index` [texts, longest] gives each token's place in the flattened rows,
    so the encoder's output can be gathered back into the padded layout the head and labels use
    (`models.parts.unpacked_encoder_output`): the same logits, with the padding's share of the compute gone."""
    import torch

    padded = collate_labeled(examples, pad_id)
    lengths = [len(e) for e in examples]
    rows = first_fit_decreasing(lengths, max(max(lengths), PACK_WIDTH))
    width = max(sum(lengths[i] for i in row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    types = torch.zeros((len(rows), width), dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    allowed = torch.zeros((len(rows), width, width), dtype=torch.bool)
    index = torch.zeros((len(examples), max(lengths)), dtype=torch.long)
    for r, row in enumerate(rows):
        offset = 0
        for i in row:
            n, span = lengths[i], slice(offset, offset + lengths[i])
            input_ids[r, span] = padded["input_ids"][i, :n]
            if "token_type_ids" in padded:
                types[r, span] = padded["token_type_ids"][i, :n]
            positions[r, span] = torch.arange(n)
            allowed[r, span, span] = True
            index[i, :n] = r * width + offset + torch.arange(n)
            offset += n
        allowed[r, offset:, offset:] = torch.eye(width - offset, dtype=torch.bool)  # padding sees itself
    # additive (0 or the most negative float): eager attention adds a 4-D mask to its scores as it is, SDPA takes it too
    mask = torch.zeros(allowed.shape).masked_fill_(~allowed, torch.finfo(torch.float32).min)[:, None]
    packed = {**padded, "input_ids": input_ids, "attention_mask": mask, "position_ids": positions,
              "unpack_index": index}
    if "token_type_ids" in padded:
        packed["token_type_ids"] = types
    return packed


def split_off_test(records: Sequence[Labeled], fraction: float, stratify: bool, seed: int,
                   where: str) -> tuple[list[Labeled], list[Labeled]]:
    """(train, test): a seeded `fraction` of the records held out, in each class's proportion when
    `stratify` (scikit-learn's split), which needs two records of every class."""
    from sklearn.model_selection import train_test_split

    classes = [r.label for r in records] if stratify else None
    if stratify:
        if (records and records[0].words) or (records and isinstance(records[0].label, float)):
            raise ConfigError(f"{where}: data.stratify splits by class, which token_classification and regression "
                              "records do not have\n  fix: set data.stratify: false")
        counts = Counter(classes)
        lonely = next((r for r in records if counts[r.label] < 2), None)
        if lonely is not None:
            raise DataError(lonely.source, lonely.where, "label", f"class {lonely.label!r} has a single example, "
                            "so a stratified split cannot put it on both sides", "add examples of this class, "
                            "drop it, or set data.stratify: false")
    try:
        train, test = train_test_split(list(records), test_size=fraction, random_state=seed, stratify=classes)
    except ValueError as exc:
        raise ConfigError(f"{where}: cannot hold out data.test_fraction={fraction} of {len(records)} records: "
                          f"{exc}\n  fix: change data.test_fraction, or give test data (data.test)") from None
    return train, test


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


class Labels(DataKind):
    """A classifier's records: its own reader, label set, tokenizing (the encoder's special tokens) and batches."""

    name = "labels"
    summary = "labelled records: a text (or pair) with a class or a number, or words with a tag each"
    tasks = TASKS

    def reader(self, task: str, label_names: Sequence[str] | None) -> LabelledReader:
        return LabelledReader(task, label_names)

    def split(self, loaded: LoadedConfig, splits: dict[str, list]) -> tuple[list, list, LabelSet]:
        return labelled_splits(loaded, splits)

    def encode(self, train: list, test: list, tokenizer, cfg: DataConfig, labels: LabelSet | None = None,
               console=None) -> EncodedSplits:
        encoded, stats = encode_labeled(train, tokenizer, labels, cfg.max_seq_len)
        test_encoded, test_stats = encode_labeled(test, tokenizer, labels, cfg.max_seq_len)
        summary = stats.summary()
        if console:
            shown = ", ".join(f"{k} {v}" for k, v in list(summary["classes"].items())[:8])
            console.info(f"data: {len(encoded)} training examples ({summary['truncated']} truncated to "
                         f"{cfg.max_seq_len} tokens), {summary['tokens']} tokens; {len(test_encoded)} test examples; "
                         + (f"labels: {shown}" if labels.task != "regression" else "regression targets"))
        return EncodedSplits(encoded, test_encoded, {"train": summary, "test": test_stats.summary() if test else None},
                             chat=False)

    def collate(self, examples: Sequence[LabeledExample], pad_id: int, packed: bool = False) -> dict:
        return (collate_labeled_packed if packed else collate_labeled)(examples, pad_id)

    def heading(self, labels: LabelSet | None) -> str | None:
        if labels is None or not labels.names:
            return None
        return f"{labels.task}: {len(labels.names)} labels, in the head's order: {', '.join(labels.names)}"

    def report(self, split: str, records: list, tokenizer, cfg: DataConfig, samples: int = 2,
               labels: LabelSet | None = None) -> SplitReport:
        encoded, stats = encode_labeled(records, tokenizer, labels, cfg.max_seq_len)
        summary = stats.summary()
        lines = [", ".join(f"{name} {count}" for name, count in summary["classes"].items())] if summary["classes"] \
            else []
        shown = [f"--- {item.example.location}: {' '.join(tokenizer.convert_ids_to_tokens(list(item.input_ids)))}  ->  "
                 + (" ".join(item.example.truth) if item.example.words else str(item.example.truth))
                 for item in encoded[:samples]]
        return SplitReport(split, f"{summary['examples']} records, {summary['truncated']} truncated to max_seq_len="
                           f"{cfg.max_seq_len}; tokens {summary['tokens']}, length p50 {summary['length_p50']} max "
                           f"{summary['length_max']}", lines, shown)


KIND = Labels()
