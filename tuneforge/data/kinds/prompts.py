"""Prompts (`prompts`: GRPO, RLOO, PPO): each record a prompt with its reference answer; the objective samples
completions of the prompts while it trains and rewards score them (the reference is the rewards' and the
evaluation's)."""

from __future__ import annotations

from tuneforge.config import LoadedConfig
from tuneforge.data.kinds.base import DataKind, require_prompts


class Prompts(DataKind):
    name = "prompts"
    summary = "prompts with reference answers: completions sampled while training, scored by rewards"
    online = True

    def check(self, records: list, objective: str, loaded: LoadedConfig | None = None) -> None:
        require_prompts(records, objective, "samples completions of prompts, so each record needs a prompt (and its "
                        "reference answer for the rewards)")


KIND = Prompts()
