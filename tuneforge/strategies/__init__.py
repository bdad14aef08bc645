"""Strategies decide what is trained when: one phase (`single`, what `tuneforge train` does), or outer loops
over several phases on one model kept in memory (multi-task, continual, federated, meta-learning ...). The
engine decides how one phase trains (`engine.session` and `engine.loop`); the run directory's life is
`runs.Run`'s.

A new strategy is one module with a `STRATEGY` entry (`base.Strategy`: what it needs, its run), its parameters in
`params.py`, and one line in the registry below. Importing this package does not import PyTorch: the registry is
built on first use, so a config's `strategy:` keys are checked against `params.PARAMS` in a fraction of a
second."""

from __future__ import annotations

from functools import cache

from pydantic import BaseModel

from tuneforge.config import LoadedConfig, registry_lookup
from tuneforge.strategies.base import Strategy, train_tasks, validate_strategy_params
from tuneforge.strategies.params import PARAMS

__all__ = ["Strategy", "get_strategy", "strategy_for", "train_tasks", "validate_strategy_params"]


@cache
def registry() -> dict[str, Strategy]:
    from tuneforge.strategies import continual, federated, fewshot, meta, multitask, single

    entries = {s.name: s for s in (single.STRATEGY, continual.STRATEGY, multitask.STRATEGY, federated.STRATEGY,
                                   meta.STRATEGY, fewshot.STRATEGY)}
    if {name: s.params for name, s in entries.items()} != PARAMS:
        raise RuntimeError("strategies.params.PARAMS and the registry disagree")  # caught by any test run
    return entries


def get_strategy(name: str) -> Strategy:
    return registry_lookup(registry(), name, "strategy")


def strategy_for(loaded: LoadedConfig) -> tuple[Strategy, BaseModel]:
    """The config's strategy and its parameters, checked against what the strategy needs (its tasks, its phases'
    data) before anything loads."""
    strategy = get_strategy(loaded.run.strategy.name)
    params = validate_strategy_params(loaded.run.strategy, loaded.where("strategy"))
    strategy.check(loaded, params)
    return strategy, params
