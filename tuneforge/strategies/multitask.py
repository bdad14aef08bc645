"""`strategy: multitask`: the tasks named in `data.train` learned together. `adapters: shared` trains one adapter
on the mixture (sampled as `data.sampling` says), which is `single` on tagged data; `adapters: per_task` trains
one adapter per task on the same base, each a complete run directory under adapters/<task> (a sub-run), so
`tuneforge chat RUN` serves them all on one base (switch with /use TASK), and `tuneforge merge` can fold them
into one. The run directory's eval.json holds each task's before/after scores (its own adapter on its own test
set) and their mean."""

from __future__ import annotations

from pathlib import Path

from tuneforge.config import LoadedConfig, NamedParams
from tuneforge.engine import checkpoint
from tuneforge.engine.console import RunConsole
from tuneforge.runs.layout import ADAPTERS, COMPLETE, status_of
from tuneforge.runs.run import Run, RunResult, finished
from tuneforge.strategies.base import Strategy, train_tasks
from tuneforge.strategies.params import MultitaskParams
from tuneforge.strategies.phase import train_phase


def run(loaded: LoadedConfig, params: MultitaskParams, *, resume: bool = False, force: bool = False,
        quiet: bool = False) -> RunResult:
    console = RunConsole(quiet=quiet)
    if params.adapters == "shared":  # one phase on the tagged mixture
        return train_phase(loaded, console, resume=resume, force=force)
    tasks = train_tasks(loaded, params.phases_by_task())
    with Run.open(loaded, console, resume=resume, force=force, checkpoints=ADAPTERS) as run:
        run.start(strategy={"name": "multitask", "adapters": "per_task", "tasks": tasks})
        results: dict[str, RunResult] = {}
        for task in tasks:
            sub = run.phase(ADAPTERS, task)
            if run.resuming and status_of(sub.dir) == COMPLETE:
                results[task] = finished(sub.dir)
                continue
            # a task killed before its first checkpoint starts again; one with a checkpoint continues from it
            can_resume = run.resuming and checkpoint.latest_checkpoint(sub.checkpoints)[0] is not None
            results[task] = train_phase(_task_config(loaded, task, sub.dir, overwrite=not can_resume), console,
                                        resume=can_resume, force=force)
        summary = {"steps": sum(r.steps for r in results.values()),
                   "wall_s": round(sum(r.train.get("wall_s", 0.0) for r in results.values()), 1)}
        return run.complete(summary, _mean({t: r.eval_after for t, r in results.items()}),
                            before=_mean({t: r.eval_before for t, r in results.items()}),
                            record={"adapters": {t: str(Path(ADAPTERS) / t) for t in tasks}})


def _task_config(loaded: LoadedConfig, task: str, out: Path, overwrite: bool) -> LoadedConfig:
    """The config of one task's own run: its train and test entries, strategy single, its own directory."""
    run = loaded.run.model_copy(deep=True)
    run.data.train = [spec for spec in run.data.train if spec.task == task]
    run.data.test = [spec for spec in run.data.test or [] if spec.task == task] or None
    run.strategy = NamedParams(name="single")
    run.output.dir, run.output.overwrite = str(out), overwrite
    return loaded.model_copy(update={"run": run})


def _mean(per_task: dict[str, dict]) -> dict:
    """Each task's scores (flattened when its test entries named the task) and the mean of those all share."""
    flat = {t: {k: v for k, v in scores.items() if k != "tasks"} for t, scores in per_task.items()}
    if not any(flat.values()):
        return {}
    keys = [k for k in next(iter(flat.values())) if all(k in s for s in flat.values())]
    return {**{k: sum(s[k] for s in flat.values()) / len(flat) for k in keys}, "tasks": flat}


STRATEGY = Strategy("multitask", "several tasks at once: one shared adapter on the mixture, or one adapter per task "
                    "on one base (served together, mergeable)", MultitaskParams, run)
