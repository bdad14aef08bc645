"""Each strategy's parameters (the `strategy:` section of a config), checked before anything loads. `PARAMS`
maps each registered strategy to its schema; the registry takes it from here."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrategyParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class SingleParams(StrategyParams):
    """One phase, one run directory: `tuneforge train` as it always was. No parameters."""


PARAMS: dict[str, type[StrategyParams]] = {"single": SingleParams}
