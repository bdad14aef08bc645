"""`strategy: single`, what `tuneforge train` does: one phase, one run directory (`phase.train_phase`), in one
process or in every process of a torch.distributed world."""

from __future__ import annotations

from tuneforge.config import LoadedConfig
from tuneforge.engine import distributed
from tuneforge.engine.console import RunConsole
from tuneforge.runs.run import RunResult
from tuneforge.strategies.base import EVERY_TASK, Strategy
from tuneforge.strategies.params import SingleParams
from tuneforge.strategies.phase import train_phase


def run(loaded: LoadedConfig, params: SingleParams | None = None, *, resume: bool = False, force: bool = False,
        quiet: bool = False) -> RunResult:
    cfg = loaded.run
    world = distributed.join_world(cfg.train.collective_timeout_s, cfg.train.distributed, loaded.where("train"))
    return train_phase(loaded, RunConsole(quiet=quiet, silent=not world.main), resume=resume, force=force, world=world)


STRATEGY = Strategy("single", "one phase: train, evaluate and save one run directory (tuneforge train)",
                    SingleParams, run, data_parallel=True, tasks=EVERY_TASK,
                    streams=True)
