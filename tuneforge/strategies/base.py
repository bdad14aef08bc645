"""What a strategy is (`Strategy`: its name, parameters, what it needs, its run) and the checks every strategy's
config passes before anything loads. Importing this does not import PyTorch."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel

from tuneforge.config import LoadedConfig, NamedParams, registry_lookup, validate_named_params
from tuneforge.errors import ConfigError
from tuneforge.strategies.params import PARAMS, StrategyParams

LANGUAGE_MODELS = ("causal_lm",)
EVERY_TASK = ("causal_lm", "sequence_classification", "token_classification", "regression")


@dataclass(frozen=True)
class Strategy:
    name: str
    summary: str
    params: type[StrategyParams]
    # (loaded config, params, *, resume, force, quiet) -> the run's result (runs.run.RunResult)
    run: Callable
    data_parallel: bool = False  # runs in every process of a torch.distributed world (torchrun, --nproc)
    tasks: tuple[str, ...] = LANGUAGE_MODELS  # the model tasks (`task:`) it trains
    needs_train_data: bool = True  # data.train (a federation's clients may bring their own)
    streams: bool = False  # trains from data read a block at a time (data.streaming), never needing it whole
    # what else the strategy needs of the config, checked before anything loads (a task family's tasks and sizes)
    requires: Callable[[LoadedConfig, StrategyParams], None] | None = None

    def check(self, loaded: LoadedConfig, params: StrategyParams) -> None:
        """What the strategy needs of the config, before anything loads: training data, a task it trains, and where
        its phases are the data's tasks, every data.train entry naming one."""
        cfg = loaded.run
        if self.needs_train_data and not cfg.data.train:
            raise ConfigError(f"{loaded.where('data')}: missing required key 'data.train'\n  fix: add the training "
                              "data, e.g. data: {train: train.jsonl}")
        if cfg.data.streaming and not self.streams:
            raise ConfigError(f"{loaded.where('data', 'streaming')}: strategy '{self.name}' uses its training data "
                              "whole (split by task or client, or replayed), which data.streaming never holds\n  fix: "
                              "set data.streaming: false, or use strategy: single")
        if cfg.task not in self.tasks:
            raise ConfigError(f"{loaded.where('strategy')}: strategy '{self.name}' trains language models only so "
                              f"far; task '{cfg.task}' trains with strategy single (and `tuneforge compare`)\n  fix: "
                              "remove the strategy section, or set task: causal_lm")
        purpose = params.phases_by_task()
        if purpose:
            train_tasks(loaded, purpose)
        if self.requires is not None:
            self.requires(loaded, params)


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
