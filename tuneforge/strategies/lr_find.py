"""`tuneforge lr-find`: the learning-rate range test (Smith 2017; fastai's `lr_find`). One short run of the config
whose rate rises exponentially from `start` to `end` over `steps` optimizer steps (`train.schedule: range_test`),
stopped once the smoothed loss passes `diverge` times its lowest or a loss is not finite; no evaluation. The loss
against the rate, and the suggested rate, are read off its metrics.jsonl (`reports.lr_find`): lr_find.json and
lr_find.png in the run directory."""

from __future__ import annotations

import math

from tuneforge.config import LoadedConfig
from tuneforge.errors import ConfigError
from tuneforge.reports.lr_find import SMOOTHING, LrFind, write_report
from tuneforge.runs.metrics import watching
from tuneforge.runs.run import Stopped, resolve_run_dir


def lr_find(loaded: LoadedConfig, *, start: float = 1e-7, end: float = 1.0, steps: int = 100, diverge: float = 4.0,
            quiet: bool = False) -> LrFind:
    from tuneforge.strategies import run_config

    if not 0 < start < end:
        raise ConfigError(f"lr-find: the rates must rise from start to end, got {start:g} to {end:g}\n  fix: e.g. "
                          "--start 1e-7 --end 1")
    if loaded.run.strategy.name != "single":
        raise ConfigError(f"{loaded.where('strategy')}: lr-find runs one phase of the config (strategy single), "
                          f"not {loaded.run.strategy.name}\n  fix: run it on a config of the phase to tune")
    run = loaded.run
    train = run.train.model_copy(update={"schedule": "range_test", "lr_start": start, "lr": end, "max_steps": steps,
                                         "warmup_steps": 0, "warmup_ratio": 0.0, "eval_every": 0, "save_every": 0,
                                         "early_stopping_patience": None, "log_every": 1})
    data = run.data.model_copy(update={"test": None})  # the loss against the rate is the training loss
    output = run.output.model_copy(update={"dir": f"{resolve_run_dir(loaded)}-lr-find"})
    probe = loaded.model_copy(update={"run": run.model_copy(update={"train": train, "data": data, "output": output})})
    smoothed, lowest = [0.0, 0], [math.inf]

    def watch(step: int, kind: str, row: dict) -> None:
        if kind == "nonfinite":
            raise Stopped(f"the loss was not finite at step {step} (lr {row.get('lr', float('nan')):.3g})")
        if kind != "train":
            return
        smoothed[0] = SMOOTHING * smoothed[0] + (1 - SMOOTHING) * row["loss"]
        smoothed[1] += 1
        value = smoothed[0] / (1 - SMOOTHING ** smoothed[1])
        lowest[0] = min(lowest[0], value)
        if smoothed[1] > 5 and value > diverge * lowest[0]:
            raise Stopped(f"the smoothed loss passed {diverge:g}x its lowest at step {step} (lr {row['lr']:.3g})")

    stopped = None
    try:
        with watching(watch):
            run_dir = run_config(probe, quiet=quiet).run_dir
    except Stopped as stop:
        stopped, run_dir = str(stop), resolve_run_dir(probe)
    return write_report(run_dir, stopped)
