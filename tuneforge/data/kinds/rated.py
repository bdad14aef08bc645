"""Rated completions (`rated`: KTO): a prompt and one completion labelled desirable or not. Each trains beside a
KL reference side, its own prompt with another record's completion (as TRL pairs them), which is scored but never
trained toward."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tuneforge.config import LoadedConfig
from tuneforge.data.check import marked
from tuneforge.data.dataset import TrainExample
from tuneforge.data.formats import with_kl_completions
from tuneforge.data.kinds.base import require
from tuneforge.data.kinds.pairs import Pairs
from tuneforge.errors import DataError


class Rated(Pairs):
    """Batched as pairs are (the KL side is the second sequence), with each example's label."""

    name = "rated"
    summary = "rated completions: a prompt and one completion labelled desirable or undesirable"
    streams = False  # each record's KL side is another record's completion

    def check(self, records: list, objective: str, loaded: LoadedConfig | None = None) -> None:
        require(records, lambda e: not e.is_rated, f"objective '{objective}' trains on rated completions, but this "
                "record has no label", "give records with prompt, completion and label (true for a desirable "
                "completion, false for an undesirable one)")
        labels = {e.desirable for e in records}
        if len(labels) < 2:
            raise DataError(records[0].source, "all records", "label", f"every label is {labels.pop()}; KTO needs "
                            "desirable and undesirable completions", "add records with the other label")

    def as_trained(self, records: list) -> list:
        return with_kl_completions(records)

    def collate(self, examples: Sequence[TrainExample], pad_id: int, packed: bool = False) -> dict:
        batch = super().collate(examples, pad_id, packed)
        batch["desirable"] = torch.tensor([bool(e.example.desirable) for e in examples])
        return batch

    def render(self, item: TrainExample, tokenizer) -> str:
        label = "desirable" if item.example.desirable else "undesirable"
        shown = f"[{label}]\n{marked(item.encoded, tokenizer)}"
        if item.rejected is None:
            return shown
        return (f"{shown}\n[KL reference point: another record's completion, scored but not trained toward]\n"
                f"{marked(item.rejected, tokenizer)}")


KIND = Rated()
