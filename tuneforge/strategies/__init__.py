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

__all__ = ["Strategy", "checked", "get_strategy", "run_config", "strategy_for", "train_tasks",
           "validate_strategy_params"]


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


def checked(loaded: LoadedConfig) -> LoadedConfig:
    """The config with its method's, objective's and strategy's own keys checked too (before PyTorch loads)."""
    from tuneforge.methods import validate_method_params
    from tuneforge.objectives import validate_objective_params

    validate_method_params(loaded.run.method, loaded.where("method"))
    validate_objective_params(loaded.run.objective, loaded.where("objective"))
    validate_strategy_params(loaded.run.strategy, loaded.where("strategy"))
    return loaded


def run_config(loaded: LoadedConfig, *, resume: bool = False, force: bool = False, quiet: bool = False):
    """Train one checked config in this process as its strategy says, then its plots and task report (rank 0)."""
    import os

    from tuneforge.engine.distributed import leave_world, require_one_process
    from tuneforge.reports.plots import plot_confusion, plot_loss
    from tuneforge.reports.tasks import write_task_report

    strategy, params = strategy_for(loaded)
    if not strategy.data_parallel:
        require_one_process(f"strategy {strategy.name}", loaded.where("strategy"))
    try:
        result = strategy.run(loaded, params, resume=resume, force=force, quiet=quiet)
    finally:  # a process of a distributed run ends its process group however it ends: exiting with it live aborts
        leave_world()
    if int(os.environ.get("RANK", "0")) == 0:  # the other processes of a distributed run write nothing
        plot_loss(result.run_dir)
        plot_confusion(result.run_dir)  # a classification run's
        write_task_report(result.run_dir)  # each task's before/after, where the test sets name tasks
    return result
