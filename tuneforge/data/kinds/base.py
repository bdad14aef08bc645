"""What every kind of training record answers for: which tasks it trains, how its records are read and checked
(before any model loads), how they become what the objective trains on, how they are tokenized and batched
(padded or packed), what its held-out evaluation needs, and how `data check` shows one. This class is the
language-model kind (plain SFT examples); the others override what differs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tuneforge.config import DataConfig, LoadedConfig
from tuneforge.data.batching import collate, collate_packed
from tuneforge.data.check import check_split, marked_text
from tuneforge.data.dataset import TrainExample, encode_examples
from tuneforge.data.render import use_chat_template
from tuneforge.data.stream import RecordStream, StreamedExamples
from tuneforge.errors import DataError


@dataclass
class EncodedSplits:
    """The tokenized training and test data, with the figures `run.json` records and whether a chat template
    renders them."""

    train: list
    test: list
    stats: dict
    chat: bool


@dataclass
class SplitReport:
    """What `data check` says of one split: its figures, warnings, a few records as trained, and an error that
    would stop training."""

    split: str
    summary: str
    lines: list[str]
    samples: list[str]  # a few records as trained, each headed by where it is
    error: str | None = None


class DataKind:
    """A kind of language-model record; each kind (`kinds/*.py`) names itself and overrides what differs."""

    name = ""
    summary = ""
    tasks: tuple[str, ...] = ("causal_lm",)
    online = False  # completions are sampled during training and scored by rewards (the prompts kind)
    perplexity = False  # the held-out loss is the data's own negative log-likelihood (plain SFT)
    streams = False  # its records train one by one as read (data.streaming), needing no others
    episodic = False  # its records can be drawn into meta-learning episodes (plain examples, a loss each)

    def reader(self, task: str, label_names: Sequence[str] | None) -> Callable | None:
        """How a raw record is read: None for the language-model formats (`data.formats`)."""
        return None

    def check(self, records: list, objective: str, loaded: LoadedConfig | None = None) -> None:
        """Every record (train and test) is of this kind, or the first that is not is named with the fix."""

    def as_trained(self, records: list) -> list:
        """The records as the objective trains them (KTO's gain their KL reference side)."""
        return records

    def answered(self, records: list, teacher: Callable[[list], list]) -> list:
        """The training records with the answers they train on (sequence-level distillation's are the teacher's:
        `teacher(records)` writes them)."""
        return records

    def heading(self, labels: Any) -> str | None:
        """What `data check` says before the splits (a classifier's classes)."""
        return None

    def split(self, loaded: LoadedConfig, splits: dict[str, list]) -> tuple[list, list, Any]:
        """(train records, test records, what the model's head predicts: None for a language model)."""
        return splits["train"], splits.get("test", []), None

    def encode(self, train: list, test: list, tokenizer, cfg: DataConfig, labels: Any = None,
               console: Any = None) -> EncodedSplits:
        """Tokenized with the length policy (the test data never dropped for length), the figures said. Streamed
        training data is tokenized a block at a time as it trains; its figures are its first block's."""
        streamed = train if isinstance(train, RecordStream) else None
        encoded, stats = encode_examples(streamed.first if streamed else train, tokenizer, cfg)
        if streamed:
            encoded = StreamedExamples(streamed, lambda block: encode_examples(block, tokenizer, cfg)[0], encoded)
        test_encoded, test_stats = encode_examples(test, tokenizer, cfg) if test else ([], None)
        summary = stats.summary() | ({"streamed": True, "block": cfg.shuffle_buffer} if streamed else {})
        if console:
            console.info(("data (streamed, its first block): " if streamed else "data: ") + f"{summary['kept']} "
                         f"training examples ({summary['truncated']} truncated, "
                         f"{summary['dropped']} dropped), {summary['tokens']} tokens, {summary['label_tokens']} "
                         f"trained; {len(test_encoded)} test examples")
            if stats.missing_end_of_turn:
                console.info(f"warning: {len(stats.missing_end_of_turn)} examples do not train an end-of-turn "
                             f"token (first: {stats.missing_end_of_turn[0]}); the model may not learn to stop")
        return EncodedSplits(encoded, test_encoded, {"train": summary, "test": test_stats.summary() if test_stats
                                                     else None}, use_chat_template(tokenizer, cfg.template))

    def collate(self, examples: Sequence[TrainExample], pad_id: int, packed: bool = False) -> dict:
        """A micro-batch: padded, or packed without padding (`train.packing`)."""
        return (collate_packed if packed else collate)(examples, pad_id)

    def render(self, item: TrainExample, tokenizer) -> str:
        """One encoded record as `data check` shows it: the trained tokens inside ⟦ ⟧."""
        return marked_text(item, tokenizer)

    def report(self, split: str, records: list, tokenizer, cfg: DataConfig, samples: int = 2,
               labels: Any = None) -> SplitReport:
        """`data check` on one split: lengths and trained tokens under the length policy, warnings, samples."""
        streamed = records if isinstance(records, RecordStream) else None
        report = check_split(split, streamed.first if streamed else records, tokenizer, cfg, samples)
        stats = report.stats.summary()
        lines = [f"sampled: the first {len(streamed.first):,} records, read as training would read its first block of "
                 f"{', '.join(map(str, streamed.paths))} (data.streaming; the rest is checked a block at a time as it "
                 "trains)"] if streamed else []
        lines += [f"tokens {stats['tokens']}, trained {stats['label_tokens']} "
                 f"({100 * stats['label_tokens'] / max(stats['tokens'], 1):.1f}%); length min {stats['length_min']} "
                 f"mean {stats['length_mean']} p50 {stats['length_p50']} p95 {stats['length_p95']} "
                 f"max {stats['length_max']}"]
        if report.stats.control_lookalikes:
            where, spelling = report.stats.control_lookalikes[0]
            lines.append(f"note: {len(report.stats.control_lookalikes)} examples quote a control token's spelling "
                         f"(first: {where}: {spelling!r}); it is encoded as plain text, never as the control token")
        if report.stats.missing_end_of_turn:
            lines.append(f"warning: {len(report.stats.missing_end_of_turn)} examples do not train an end-of-turn "
                         f"token, e.g. {report.stats.missing_end_of_turn[0]}; the model may not learn to stop")
        return SplitReport(split, f"{stats['examples']} examples: {stats['kept']} kept, {stats['truncated']} "
                           f"truncated, {stats['dropped']} dropped (data.overlong={cfg.overlong}, "
                           f"max_seq_len={cfg.max_seq_len})", lines,
                           [f"--- {item.example.location} (trained tokens inside ⟦ ⟧)\n{self.render(item, tokenizer)}"
                            for item in report.samples], report.drop_error)


def require(records: list, wrong: Callable[[Any], bool], why: str, fix: str, field: str | None = None) -> None:
    """The first record for which `wrong` holds is named, with why it cannot train and the fix."""
    found = next((e for e in records if wrong(e)), None)
    if found is not None:
        raise DataError(found.source, found.where, field, why, fix)


def refuse_rated(records: list, objective: str) -> None:
    """A rated record never trains as plain or preference data: its completion may be a bad one."""
    require(records, lambda e: e.is_rated, f"this record is a rated completion (prompt/completion/label), and "
            f"objective '{objective}' would train toward it whatever its label",
            "use objective: kto, or drop the label (keep only good completions) for sft", "label")


def require_prompts(records: list, objective: str, why: str) -> None:
    """Records the objective answers itself (sampled, or by a teacher): each a prompt with its reference answer."""
    require(records, lambda e: e.is_pair or e.is_rated or e.prompt_and_reference() is None,
            f"objective '{objective}' {why}", "give records with prompt and completion (the reference), or messages "
            "ending in an assistant turn")
