"""`strategy: sequential`, continual learning: the tasks named in `data.train` are trained one after another on
one model kept in memory, each with its own optimizer and schedule (`train.max_steps` / `epochs` per task), and
after each every task's test set is scored, which fills the accuracy matrix (reports/continual.py). A
mitigation (strategies/mitigations.py) may add a penalty to the loss, add replayed examples, or give each task
its own LoRA.

The run directory is single's (lock, resume identity, run.json, eval.json, the method's saved weights), with
one folder per task under tasks/: its checkpoints and metrics.jsonl while it trains, then its state (the
trained weights and the mitigation's tensors) and result.json once it is done. `--resume` skips the finished
tasks, loading the last one's state, and continues the unfinished one from its newest checkpoint; each task
starts from a seed of its own, so a resumed run ends with the same weights as an uninterrupted one."""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tuneforge.config import LoadedConfig, dump_yaml
from tuneforge.engine import checkpoint
from tuneforge.engine.lock import run_lock
from tuneforge.engine.loop import LoopState, train_loop
from tuneforge.engine.resources import resource_guard
from tuneforge.engine.session import loop_inputs, make_evaluator, open_session, prepare_data, read_recipe
from tuneforge.engine.tracking import METRICS_FILE, MetricsLog, RunConsole
from tuneforge.errors import CheckpointError, ConfigError
from tuneforge.reports.continual import run_heatmap, summary
from tuneforge.strategies import Strategy, train_tasks
from tuneforge.strategies.mitigations import MITIGATIONS, Olora, require_plain_lora
from tuneforge.strategies.params import SequentialParams
from tuneforge.strategies.single import (
    CHECKPOINTS,
    EVAL_FILE,
    RUN_FILE,
    RunResult,
    check_run_dir,
    check_same_run,
    create_run_dir,
    fingerprint_of,
    format_scores,
    read_json,
    resolve_run_dir,
    run_inputs,
    step_of,
    write_json,
)

STATE_FILE = "state.safetensors"
RESULT_FILE = "result.json"


def task_order(loaded: LoadedConfig, metric: str) -> list[str]:
    """The tasks in the order their first `data.train` entry names them; every entry must name one, and every
    task needs a test set of its own (its row of the accuracy matrix)."""
    cfg = loaded.run
    tasks = train_tasks(loaded, "strategy: sequential trains the tasks one after another")
    tested = {spec.task for spec in cfg.data.test or []}
    missing = [t for t in tasks if t not in tested]
    if missing:
        raise ConfigError(f"{loaded.where('data', 'test')}: no test set for task(s) {', '.join(missing)}\n  fix: "
                          "add a data.test entry {path: ..., task: NAME} for each task, so each is scored after "
                          "every task")
    if len(tasks) < 2:
        raise ConfigError(f"{loaded.where('data', 'train')}: strategy: sequential needs at least two tasks, got "
                          f"{tasks}\n  fix: name two or more tasks in data.train, or use strategy: single")
    if metric not in cfg.eval.metrics:
        raise ConfigError(f"{loaded.where('strategy')}: strategy.metric '{metric}' is not scored\n  fix: add it to "
                          f"eval.metrics ({', '.join(cfg.eval.metrics)}), or set strategy.metric to one of them")
    return tasks


def run(loaded: LoadedConfig, params: SequentialParams, *, resume: bool = False, force: bool = False,
        quiet: bool = False) -> RunResult:
    cfg = loaded.run
    console = RunConsole(quiet=quiet)
    recipe = read_recipe(loaded)
    tasks = task_order(loaded, params.metric)
    mitigation_params = params.chosen(loaded.where("strategy"))
    if params.mitigation.name == "olora":  # before the model loads
        require_plain_lora(recipe.method.name, recipe.method_params)
    run_dir = resolve_run_dir(loaded)

    def guard(doing: str):
        return resource_guard(doing, run_dir / "tasks", cfg.train)

    with run_lock(run_dir):
        resuming = check_run_dir(run_dir, resume, cfg.output.overwrite,
                                 run_inputs(loaded) if cfg.output.overwrite and not resume else ())
        prepared = prepare_data(loaded, console, recipe.objective)
        fingerprint = fingerprint_of(cfg, prepared)
        phases = [run_dir / "tasks" / f"{i + 1}-{task}" for i, task in enumerate(tasks)]
        if resuming:
            _check_resumable(run_dir, phases, cfg, fingerprint, force, console)
        with guard("loading the model"):
            session = open_session(loaded, recipe, console)
        mitigation = MITIGATIONS[params.mitigation.name](mitigation_params, session, cfg.train.seed,
                                                         prepared.tokenizer.pad_token_id)
        status = {"fingerprint": fingerprint, **session.summary(), "data": prepared.stats,
                  "strategy": {"name": "sequential", "tasks": tasks, "mitigation": params.mitigation.name}}
        with guard("creating the run directory"):
            create_run_dir(run_dir, resuming, cfg.output.overwrite)
            (run_dir / "config.yaml").write_text(dump_yaml(cfg))
            prepared.tokenizer.save_pretrained(run_dir / "tokenizer")
            write_json(run_dir / RUN_FILE, {"status": "training", **status})

        evaluate = make_evaluator(session, prepared, cfg)
        before = read_json(run_dir / EVAL_FILE).get("before") if resuming else None
        if not before:
            console.info("scoring every task before training ...")
            before = evaluate(generate=True)[0]
            console.info("before: " + format_scores(before))
            write_json(run_dir / EVAL_FILE, {"before": before})
        rows, walls, steps, peak = [before], [], 0, 0.0
        by_task = {t: [e for e in prepared.train if e.example.task == t] for t in tasks}
        for index, (task, phase) in enumerate(zip(tasks, phases, strict=True)):
            own = by_task[task]
            if (phase / RESULT_FILE).is_file():  # finished before a resume: its state, not its training
                mitigation.prepare_restore(index)
                _load_phase(phase, session.model, mitigation)
                mitigation.remember(index, own)
                result = read_json(phase / RESULT_FILE)
                rows.append(result["scores"])
                walls.append(result["wall_s"])
                steps += result["steps"]
                peak = max(peak, result.get("peak_memory_gib", 0.0))
                console.info(f"task {index + 1}/{len(tasks)} {task}: done before (resumed)")
                continue
            found = checkpoint.latest_checkpoint(phase / CHECKPOINTS)[0] if resuming else None
            console.info(f"task {index + 1}/{len(tasks)} {task}: {len(own)} examples"
                         + (f", resuming from {found.name}" if found else ""))
            torch.manual_seed(cfg.train.seed + index)  # the same start however the run got here
            penalty = mitigation.start(index, own, step_of(found) or 0)
            mixed = mitigation.examples(index, own)
            phase_data = dataclasses.replace(prepared, train=mixed)
            phase_cfg = _per_task(cfg, len(mixed) / len(own))
            phase.mkdir(parents=True, exist_ok=True)
            metrics = MetricsLog(phase, cfg, resume_step=step_of(found))  # a tracker run per phase
            if index == 0 and found is None:
                metrics.log(0, "eval_before", before)
            started = time.perf_counter()
            try:
                inputs = loop_inputs(session, phase_data, phase_cfg, metrics, console, phase / CHECKPOINTS, evaluate)
                inputs.penalty = penalty
                state = train_loop(inputs, LoopState(fingerprint=fingerprint), found)
                wall = time.perf_counter() - started
                with guard(f"scoring every task after {task}"):
                    if index < len(tasks) - 1:  # what it keeps (EWC's Fisher) serves the tasks after this one
                        mitigation.finish(index, own)
                    mitigation.remember(index, own)
                    scores = evaluate(generate=True)[0]
                metrics.log(state.step, "final_eval", scores)
                console.info(f"after {task}: " + format_scores(scores))
                phase_peak = max((r.get("peak_memory_gib", 0.0) for r in _train_rows(phase)), default=0.0)
                with guard(f"saving the state after {task}"):
                    _save_phase(phase, session.model, mitigation, {"task": task, "scores": scores,
                                                                   "steps": state.step, "wall_s": round(wall, 1),
                                                                   "peak_memory_gib": phase_peak,
                                                                   "fingerprint": fingerprint})
            except BaseException:
                metrics.close(failed=True)
                raise
            metrics.close(artifacts=[phase / RESULT_FILE, phase / METRICS_FILE])
            rows.append(scores)
            walls.append(round(wall, 1))
            steps += state.step
            peak = max(peak, phase_peak)

        matrix = [[row["tasks"][t][params.metric] for t in tasks] for row in rows]
        figures = summary(matrix)
        console.info(_matrix_text(matrix, tasks, params.metric, figures))
        checkpoint.require_finite(checkpoint.trainable_state(session.model), "the trained weights")
        with guard("saving the trained weights"):
            if isinstance(mitigation, Olora):
                mitigation.combined(run_dir / "adapter")
            else:
                recipe.method.save(session.model, run_dir)
        train_summary = {"steps": steps, "wall_s": round(sum(walls), 1), "task_wall_s": walls,
                         "peak_memory_gib": round(peak, 3)}
        with guard("writing the run's results"):
            write_json(run_dir / EVAL_FILE, {
                "before": before, "after": rows[-1],
                "continual": {"tasks": tasks, "metric": params.metric, "matrix": matrix, "summary": figures,
                              "mitigation": {"name": params.mitigation.name, **mitigation_params.model_dump()}}})
            run_heatmap(run_dir)
            weights = {str(p.relative_to(run_dir)): checkpoint.sha256_of(p) for p in
                       sorted(run_dir.glob("**/*.safetensors")) if p.relative_to(run_dir).parts[0] != "tasks"}
            write_json(run_dir / RUN_FILE, {"status": "complete", **status, "train": train_summary,
                                            "weights_sha256": weights})
        return RunResult(run_dir, steps, train_summary, before, rows[-1])


def _per_task(cfg, growth: float):
    """The task's training settings: examples a mitigation adds (replay) are trained in addition, so with
    `train.max_steps` the task's steps grow by the same factor and the task itself is seen as often as without
    them (with `epochs` an epoch covers them anyway)."""
    if growth <= 1 or cfg.train.max_steps is None:
        return cfg
    return cfg.model_copy(update={"train": cfg.train.model_copy(
        update={"max_steps": math.ceil(cfg.train.max_steps * growth)})})


def _check_resumable(run_dir: Path, phases: list[Path], cfg, fingerprint: dict, force: bool,
                     console: RunConsole) -> None:
    """A resume continues the run that wrote the tasks: the newest checkpoint or finished task must carry the
    same fingerprint (single's identity check), and there must be one."""
    newest = None
    for phase in phases:
        found = checkpoint.latest_checkpoint(phase / CHECKPOINTS)[0]
        if (phase / RESULT_FILE).is_file():
            newest = phase
        elif found is not None:
            newest = found
            break
        else:
            break
    if newest is None:
        raise CheckpointError(f"--resume: no finished task and no complete checkpoint under {run_dir / 'tasks'}\n"
                              "  fix: start again with output.overwrite=true (and train.save_every > 0 so the "
                              "run writes checkpoints)")
    saved = read_json(newest / (RESULT_FILE if (newest / RESULT_FILE).is_file() else "state.json"))
    check_same_run(run_dir, saved.get("fingerprint", {}), cfg, fingerprint, force, console)


def _save_phase(phase: Path, model: torch.nn.Module, mitigation, result: dict) -> None:
    """The task's end state, then its result.json, which marks it finished (each written whole or not at all)."""
    tensors = {f"model/{n}": t for n, t in checkpoint.trainable_state(model).items()}
    tensors |= {f"mitigation/{n}": t.contiguous() for n, t in mitigation.state().items()}
    tmp = phase / (STATE_FILE + ".tmp")
    save_file(tensors, tmp)
    tmp.replace(phase / STATE_FILE)
    write_json(phase / RESULT_FILE, result)


def _load_phase(phase: Path, model: torch.nn.Module, mitigation) -> None:
    tensors = load_file(phase / STATE_FILE)
    saved = {n[len("model/"):]: t for n, t in tensors.items() if n.startswith("model/")}
    extra = {n[len("mitigation/"):]: t for n, t in tensors.items() if n.startswith("mitigation/")}
    named = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in {**saved, **{n: t for n, t in extra.items() if n in named}}.items():
            named[name].copy_(value)
    mitigation.load_state(extra)


def _train_rows(phase: Path) -> list[dict]:
    from tuneforge.engine.tracking import read_metrics

    return [r for r in read_metrics(phase) if r["kind"] == "train"]


def _matrix_text(matrix: list[list[float]], tasks: list[str], metric: str, figures: dict) -> str:
    width = max(12, *(len(t) + 2 for t in tasks))
    lines = [f"accuracy matrix ({metric}; rows: after each task)",
             " " * 16 + "".join(t.rjust(width) for t in tasks)]
    for label, row in zip(["before", *tasks], matrix, strict=True):
        lines.append(label[:15].ljust(16) + "".join(f"{v:{width}.1f}" for v in row))
    lines.append(f"average {figures['average']:.1f}  BWT {figures['bwt']:+.1f}  FWT {figures['fwt']:+.1f}  "
                 f"forgetting {figures['mean_forgetting']:.1f}")
    return "\n".join(lines)


STRATEGY = Strategy("sequential", "continual learning: the data.train tasks one after another on one model, with "
                    "a forgetting mitigation; the accuracy matrix, BWT and FWT", SequentialParams, run)
