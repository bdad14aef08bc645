"""`strategy: multitask`: the tasks named in `data.train` learned together. `adapters: shared` trains one adapter
on the mixture (sampled as `data.sampling` says), which is `single` on tagged data; `adapters: per_task` trains
one adapter per task on the same base, each a complete run directory under adapters/<task>/, so
`tuneforge chat RUN` serves them all on one base (switch with /use TASK), and `tuneforge merge` can fold them
into one. The run directory's eval.json holds each task's before/after scores (its own adapter on its own test
set) and their mean."""

from __future__ import annotations

from pathlib import Path

from tuneforge.config import LoadedConfig, NamedParams, dump_yaml
from tuneforge.engine import checkpoint
from tuneforge.engine.lock import run_lock
from tuneforge.strategies import Strategy, train_tasks
from tuneforge.strategies import single as single_strategy
from tuneforge.strategies.params import MultitaskParams, SingleParams
from tuneforge.strategies.single import (
    CHECKPOINTS,
    EVAL_FILE,
    RUN_FILE,
    RunResult,
    check_run_dir,
    create_run_dir,
    read_json,
    resolve_run_dir,
    run_inputs,
    write_json,
)

ADAPTERS = "adapters"


def run(loaded: LoadedConfig, params: MultitaskParams, *, resume: bool = False, force: bool = False,
        quiet: bool = False) -> RunResult:
    if params.adapters == "shared":
        return single_strategy.run(loaded, SingleParams(), resume=resume, force=force, quiet=quiet)
    cfg = loaded.run
    tasks = train_tasks(loaded, "adapters: per_task trains one adapter per task")
    run_dir = resolve_run_dir(loaded)
    with run_lock(run_dir):
        resuming = check_run_dir(run_dir, resume, cfg.output.overwrite,
                                 run_inputs(loaded) if cfg.output.overwrite and not resume else ())
        create_run_dir(run_dir, resuming, cfg.output.overwrite)
        (run_dir / "config.yaml").write_text(dump_yaml(cfg))
        status = {"strategy": {"name": "multitask", "adapters": "per_task", "tasks": tasks}}
        write_json(run_dir / RUN_FILE, {"status": "training", **status})
        results: dict[str, RunResult] = {}
        for task in tasks:
            task_dir = run_dir / ADAPTERS / task
            if resuming and read_json(task_dir / RUN_FILE).get("status") == "complete":
                results[task] = _finished(task_dir)
                continue
            # a task killed before its first checkpoint starts again; one with a checkpoint continues from it
            can_resume = resuming and checkpoint.latest_checkpoint(task_dir / CHECKPOINTS)[0] is not None
            sub = _task_config(loaded, task, task_dir, overwrite=not can_resume)
            results[task] = single_strategy.run(sub, SingleParams(), resume=can_resume, force=force, quiet=quiet)
        before = _mean({t: r.eval_before for t, r in results.items()})
        after = _mean({t: r.eval_after for t, r in results.items()})
        steps = sum(r.steps for r in results.values())
        summary = {"steps": steps, "wall_s": round(sum(r.train.get("wall_s", 0.0) for r in results.values()), 1)}
        write_json(run_dir / EVAL_FILE, {"before": before, "after": after})
        write_json(run_dir / RUN_FILE, {"status": "complete", **status, "train": summary,
                                        "adapters": {t: str(Path(ADAPTERS) / t) for t in tasks}})
        return RunResult(run_dir, steps, summary, before, after)


def adapter_runs(run_dirs: list[Path]) -> list[Path]:
    """Run directories as `chat` and `merge` take them: a per-task multitask run stands for its adapters."""
    expanded = []
    for run_dir in run_dirs:
        strategy = read_json(Path(run_dir) / RUN_FILE).get("strategy") or {}
        if strategy.get("name") == "multitask" and strategy.get("adapters") == "per_task":
            expanded += [Path(run_dir) / ADAPTERS / task for task in strategy["tasks"]]
        else:
            expanded.append(Path(run_dir))
    return expanded


def _task_config(loaded: LoadedConfig, task: str, out: Path, overwrite: bool) -> LoadedConfig:
    """The config of one task's own run: its train and test entries, strategy single, its own directory."""
    run = loaded.run.model_copy(deep=True)
    run.data.train = [spec for spec in run.data.train if spec.task == task]
    run.data.test = [spec for spec in run.data.test or [] if spec.task == task] or None
    run.strategy = NamedParams(name="single")
    run.output.dir, run.output.overwrite = str(out), overwrite
    return loaded.model_copy(update={"run": run})


def _finished(task_dir: Path) -> RunResult:
    evaluation = read_json(task_dir / EVAL_FILE)
    status = read_json(task_dir / RUN_FILE)
    return RunResult(task_dir, status.get("train", {}).get("steps", 0), status.get("train", {}),
                     evaluation.get("before", {}), evaluation.get("after", {}))


def _mean(per_task: dict[str, dict]) -> dict:
    """Each task's scores (flattened when its test entries named the task) and the mean of those all share."""
    flat = {t: {k: v for k, v in scores.items() if k != "tasks"} for t, scores in per_task.items()}
    if not any(flat.values()):
        return {}
    keys = [k for k in next(iter(flat.values())) if all(k in s for s in flat.values())]
    return {**{k: sum(s[k] for s in flat.values()) / len(flat) for k in keys}, "tasks": flat}


STRATEGY = Strategy("multitask", "several tasks at once: one shared adapter on the mixture, or one adapter per task "
                    "on one base (served together, mergeable)", MultitaskParams, run)
