"""Strategies decide what is trained when: one phase (`single`, what `tuneforge train` does), or outer loops
over several phases on one model kept in memory (multi-task, continual, federated, meta-learning ...). The
engine decides how one phase trains (`engine.session` and `engine.loop`).

A new strategy is one module with a `STRATEGY` entry, its parameters in `params.py`, and one line in the
registry below. Importing this package does not import PyTorch: the registry is built on first use, so a
config's `strategy:` keys are checked against `params.PARAMS` in a fraction of a second."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

from pydantic import BaseModel

from tuneforge.config import LoadedConfig, NamedParams, registry_lookup, validate_named_params
from tuneforge.errors import ConfigError
from tuneforge.strategies.params import PARAMS, StrategyParams

__all__ = ["Strategy", "get_strategy", "validate_strategy_params"]


@dataclass(frozen=True)
class Strategy:
    name: str
    summary: str
    params: type[StrategyParams]
    # (loaded config, params, *, resume, force, quiet) -> the run's result (RunResult for single)
    run: Callable
    data_parallel: bool = False  # runs in every process of a torch.distributed world (torchrun, --nproc)


@cache
def registry() -> dict[str, Strategy]:
    from tuneforge.strategies import continual, federated, multitask, single

    entries = {s.name: s for s in (single.STRATEGY, continual.STRATEGY, multitask.STRATEGY, federated.STRATEGY)}
    if {name: s.params for name, s in entries.items()} != PARAMS:
        raise RuntimeError("strategies.params.PARAMS and the registry disagree")  # caught by any test run
    return entries


def get_strategy(name: str) -> Strategy:
    return registry_lookup(registry(), name, "strategy")


def validate_strategy_params(spec: NamedParams, where: str = "config key 'strategy'") -> BaseModel:
    """Validate the strategy's own parameters (unknown keys fail with the closest valid name); needs no
    PyTorch."""
    params = validate_named_params(registry_lookup(PARAMS, spec.name, "strategy"), spec, "strategy", where)
    params.check(where)  # nested choices (a sequential strategy's mitigation) are checked now too
    return params


def train_tasks(loaded: LoadedConfig, purpose: str) -> list[str]:
    """The tasks of `data.train` in the order their first entry names them; a strategy that trains by task
    (`purpose` says how) needs every entry to name one."""
    tasks: list[str] = []
    for index, spec in enumerate(loaded.run.data.train):
        if spec.task is None:
            raise ConfigError(f"{loaded.where('data', 'train')}: entry {index} ({spec.path}) names no task; "
                              f"{purpose}\n  fix: give every data.train entry a task: {{path: ..., task: NAME}}")
        if spec.task not in tasks:
            tasks.append(spec.task)
    return tasks
