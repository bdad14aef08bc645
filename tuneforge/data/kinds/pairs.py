"""Preference pairs (`pairs`: DPO and its family, reward models): a prompt with a chosen and a rejected response,
each side a conversation whose response is what is compared. Packed, a pair shares its prompt's computation."""

from __future__ import annotations

from collections.abc import Sequence

from tuneforge.config import LoadedConfig
from tuneforge.data.batching import collate, collate_pairs_packed
from tuneforge.data.check import marked
from tuneforge.data.dataset import TrainExample
from tuneforge.data.kinds.base import DataKind, refuse_rated, require
from tuneforge.errors import ConfigError


class Pairs(DataKind):
    name = "pairs"
    summary = "preference pairs: a prompt with a chosen and a rejected response"
    streams = True

    def check(self, records: list, objective: str, loaded: LoadedConfig | None = None) -> None:
        refuse_rated(records, objective)
        require(records, lambda e: not e.is_pair, f"objective '{objective}' trains on preference pairs, but this "
                "record is not one", "give records with prompt, chosen and rejected, or use objective: sft")
        if loaded is not None and loaded.run.data.train_on_prompt:
            raise ConfigError(f"{loaded.where('data', 'train_on_prompt')}: data.train_on_prompt does not apply to "
                              "preference objectives (only the responses are compared)\n"
                              "  fix: remove data.train_on_prompt")

    def collate(self, examples: Sequence[TrainExample], pad_id: int, packed: bool = False) -> dict:
        return (collate_pairs_packed if packed else collate)(examples, pad_id)

    def render(self, item: TrainExample, tokenizer) -> str:
        return f"[chosen]\n{marked(item.encoded, tokenizer)}\n[rejected]\n{marked(item.rejected, tokenizer)}"


KIND = Pairs()
