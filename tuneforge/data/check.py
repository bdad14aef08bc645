"""`tuneforge data check`: what will be trained, shown before any model weights are loaded."""

from __future__ import annotations

from dataclasses import dataclass

from tuneforge.config import DataConfig
from tuneforge.data.dataset import EncodeStats, TrainExample, check_drop_fraction, encode_examples
from tuneforge.data.formats import Example
from tuneforge.data.render import IGNORE_INDEX, Encoded
from tuneforge.errors import DataError

TRAINED_OPEN, TRAINED_CLOSE = "\u27e6", "\u27e7"  # ⟦ trained text ⟧ in plain output


@dataclass
class DataCheck:
    """What `tuneforge data check` found, before any model weights load: notes from reading (records skipped, keys
    nothing reads), what the data kind says first (a classifier's classes), and each split's report."""

    notes: list[str]
    heading: str | None
    splits: list  # data.kinds.SplitReport, one per split

    @property
    def failed(self) -> bool:
        """Whether training would stop on this data (too much of it dropped for length)."""
        return any(report.error for report in self.splits)

    def lines(self) -> list[str]:
        out = [*self.notes, *([self.heading] if self.heading else [])]
        for report in self.splits:
            out.append(f"[{report.split}] {report.summary}")
            out += [f"  {line}" for line in report.lines]
            out += [f"  error: {report.error}"] if report.error else []
            out += ["  " + sample.replace("\n", "\n  ") for sample in report.samples]
        return out


@dataclass
class DataReport:
    split: str
    stats: EncodeStats
    samples: list[TrainExample]
    drop_error: str | None = None


def check_split(split: str, examples: list[Example], tokenizer, cfg: DataConfig, samples: int = 2) -> DataReport:
    kept, stats = encode_examples(examples, tokenizer, cfg, apply_drop_guard=False)
    drop_error = None
    try:
        check_drop_fraction(stats, cfg, examples)
    except DataError as exc:
        drop_error = str(exc)
    return DataReport(split, stats, kept[:samples], drop_error)


def trained_segments(sequence: Encoded, tokenizer) -> list[tuple[str, bool]]:
    """A sequence's text cut into (text, trained?) runs, each run decoded whole (a character spread over
    several byte-level tokens, as most non-ASCII text is, decodes only with all of them)."""
    runs: list[tuple[list[int], bool]] = []
    for token_id, label in zip(sequence.input_ids, sequence.labels, strict=True):
        trained = label != IGNORE_INDEX
        if runs and runs[-1][1] == trained:
            runs[-1][0].append(token_id)
        else:
            runs.append(([token_id], trained))
    return [(tokenizer.decode(ids, skip_special_tokens=False), trained) for ids, trained in runs]


def marked(sequence: Encoded, tokenizer) -> str:
    """One sequence as plain text with its trained runs wrapped in ⟦ ⟧."""
    return "".join(f"{TRAINED_OPEN}{text}{TRAINED_CLOSE}" if trained else text
                   for text, trained in trained_segments(sequence, tokenizer))


def marked_text(item: TrainExample, tokenizer) -> str:
    """An encoded example's sequences as `marked` text, one after the other (how each data kind shows its
    sides: `data.kinds`)."""
    return "\n".join(marked(sequence, tokenizer) for sequence in item.sequences)
