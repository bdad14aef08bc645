"""Plain examples (`sft`): conversations (the assistant turns trained) or texts (every token trained)."""

from __future__ import annotations

from tuneforge.config import LoadedConfig
from tuneforge.data.kinds.base import DataKind, refuse_rated, require


class Sft(DataKind):
    name = "sft"
    summary = "conversations or texts: the assistant turns (or every token) trained"
    streams = True
    perplexity = True
    episodic = True

    def check(self, records: list, objective: str, loaded: LoadedConfig | None = None) -> None:
        refuse_rated(records, objective)
        require(records, lambda e: e.is_pair, f"this record is a preference pair (prompt/chosen/rejected), but "
                f"objective '{objective}' does not train on pairs", "use a preference objective (objective: dpo, "
                "ipo, cdpo, simpo, orpo or reward)")


KIND = Sft()
