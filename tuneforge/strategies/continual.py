"""`strategy: sequential`, continual learning: the tasks named in `data.train` are trained one after another on
one model kept in memory, each with its own optimizer and schedule (`train.max_steps` / `epochs` per task), and
after each every task's test set is scored, which fills the accuracy matrix (reports/continual.py). A
mitigation (strategies/mitigations.py) may add a penalty to the loss, add replayed examples, or give each task
its own LoRA.

The run directory is `runs.Run`'s (lock, resume identity, run.json, eval.json, the method's saved weights),
with one sub-run per task under tasks/: its checkpoints and metrics.jsonl while it trains, then its state (the
trained weights and the mitigation's tensors) and result.json once it is done. `--resume` skips the finished
tasks, loading the last one's state, and continues the unfinished one from its newest checkpoint; each task
starts from a seed of its own, so a resumed run ends with the same weights as an uninterrupted one."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from tuneforge.config import LoadedConfig
from tuneforge.engine import checkpoint
from tuneforge.engine.console import RunConsole, format_scores
from tuneforge.engine.loop import LoopState, train_loop
from tuneforge.engine.session import Prepared, Session, loop_inputs, make_evaluator, open_session, prepare_data
from tuneforge.errors import ConfigError
from tuneforge.reports.continual import run_heatmap, summary
from tuneforge.runs.identity import fingerprint_of
from tuneforge.runs.layout import TASKS, read_metrics
from tuneforge.runs.recipe import read_recipe
from tuneforge.runs.run import Phase, Run, RunResult
from tuneforge.strategies.base import Strategy, train_tasks
from tuneforge.strategies.mitigations import MITIGATIONS, Mitigation, Olora, require_plain_lora
from tuneforge.strategies.params import SequentialParams


def task_order(loaded: LoadedConfig, metric: str) -> list[str]:
    """The tasks in the order their first `data.train` entry names them; every entry must name one, and every
    task needs a test set of its own (its row of the accuracy matrix)."""
    cfg = loaded.run
    tasks = train_tasks(loaded, SequentialParams().phases_by_task())
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
    with Run.open(loaded, console, resume=resume, force=force, checkpoints=TASKS) as run:
        phases = [run.phase(TASKS, f"{i + 1}-{task}") for i, task in enumerate(tasks)]
        run.require_checkpoint(phases)
        prepared = prepare_data(loaded, console, recipe)
        run.identify(fingerprint_of(cfg, prepared))
        with run.guard("loading the model"):
            session = open_session(loaded, recipe, console)
        mitigation = MITIGATIONS[params.mitigation.name](mitigation_params, session, cfg.train.seed,
                                                         prepared.tokenizer.pad_token_id)
        run.start(prepared.tokenizer, **session.summary(), data=prepared.stats,
                  strategy={"name": "sequential", "tasks": tasks, "mitigation": params.mitigation.name})
        sequence = _Sequence(run, tasks, session, prepared, mitigation, make_evaluator(session, prepared, cfg))
        rows = [run.evaluate_before(sequence.evaluate, "every task")]
        results = [sequence.restore(i, phase) if phase.done else sequence.train(i, phase) for i, phase in
                   enumerate(phases)]
        rows += [result["scores"] for result in results]
        matrix = [[row["tasks"][t][params.metric] for t in tasks] for row in rows]
        figures = summary(matrix)
        console.info(_matrix_text(matrix, tasks, params.metric, figures))
        combined = (lambda directory: mitigation.combined(directory / "adapter")) if isinstance(mitigation, Olora) \
            else None
        run.save(session.model, recipe, combined)
        walls = [r["wall_s"] for r in results]
        result = run.complete({"steps": sum(r["steps"] for r in results), "wall_s": round(sum(walls), 1),
                               "task_wall_s": walls,
                               "peak_memory_gib": round(max(r.get("peak_memory_gib", 0.0) for r in results), 3)},
                              rows[-1], evaluation={"continual": {
                                  "tasks": tasks, "metric": params.metric, "matrix": matrix, "summary": figures,
                                  "mitigation": {"name": params.mitigation.name, **mitigation_params.model_dump()}}})
        run_heatmap(run.dir)
        return result


@dataclass
class _Sequence:
    """The tasks trained one after another on the session's model."""

    run: Run
    tasks: list[str]
    session: Session
    prepared: Prepared
    mitigation: Mitigation
    evaluate: object

    def own(self, index: int) -> list:
        return [e for e in self.prepared.train if e.example.task == self.tasks[index]]

    def train(self, index: int, phase: Phase) -> dict:
        """Task `index`: its examples (and what the mitigation adds) trained from its own seed (the same start
        however the run got here: a resumed task continues from its newest checkpoint), then every task scored
        and the task's end state saved; its result."""
        run, cfg, name, own = self.run, self.run.cfg, self.tasks[index], self.own(index)
        found = phase.resume_point()
        run.console.info(f"task {index + 1}/{len(self.tasks)} {name}: {len(own)} examples"
                         + (f", resuming from {found.name}" if found else ""))
        torch.manual_seed(cfg.train.seed + index)
        penalty = self.mitigation.start(index, own, checkpoint.step_of(found) or 0)
        mixed = self.mitigation.examples(index, own)
        with phase.logging(checkpoint.step_of(found)) as metrics:  # a tracker run per phase
            inputs = loop_inputs(self.session, dataclasses.replace(self.prepared, train=mixed),
                                 _per_task(cfg, len(mixed) / len(own)), metrics, run.console, phase.checkpoints,
                                 self.evaluate)
            inputs.penalty = penalty
            state = train_loop(inputs, LoopState(fingerprint=run.fingerprint), found)
            wall = run.wall_s()
            with run.guard(f"scoring every task after {name}"):
                if index < len(self.tasks) - 1:  # what it keeps (EWC's Fisher) serves the tasks after this one
                    self.mitigation.finish(index, own)
                self.mitigation.remember(index, own)
            scores = phase.score(self.evaluate, state.step, f"scoring every task after {name}")[0]
            run.console.info(f"after {name}: " + format_scores(scores))
            peak = max((r.get("peak_memory_gib", 0.0) for r in read_metrics(phase.dir) if r["kind"] == "train"),
                       default=0.0)
            tensors = {f"model/{n}": t for n, t in checkpoint.trainable_state(self.session.model).items()}
            _save_phase(phase, tensors | {f"mitigation/{n}": t for n, t in self.mitigation.state().items()},
                        {"task": name, "scores": scores, "steps": state.step, "wall_s": wall, "peak_memory_gib": peak})
        return phase.result()

    def restore(self, index: int, phase: Phase) -> dict:
        """A task finished before a resume: the model and the mitigation as it left them; its result."""
        self.mitigation.prepare_restore(index)
        tensors = phase.state()
        saved = {n[len("model/"):]: t for n, t in tensors.items() if n.startswith("model/")}
        extra = {n[len("mitigation/"):]: t for n, t in tensors.items() if n.startswith("mitigation/")}
        named = dict(self.session.model.named_parameters())
        with torch.no_grad():
            for name, value in {**saved, **{n: t for n, t in extra.items() if n in named}}.items():
                named[name].copy_(value)
        self.mitigation.load_state(extra)
        self.mitigation.remember(index, self.own(index))
        self.run.console.info(f"task {index + 1}/{len(self.tasks)} {self.tasks[index]}: done before (resumed)")
        return phase.result()


def _save_phase(phase: Phase, tensors: dict, result: dict) -> None:
    """The task's end state and result (a kill test's target: between a task's training and its saved state)."""
    phase.finish(result, tensors)


def _per_task(cfg, growth: float):
    """The task's training settings: examples a mitigation adds (replay) are trained in addition, so with
    `train.max_steps` the task's steps grow by the same factor and the task itself is seen as often as without
    them (with `epochs` an epoch covers them anyway)."""
    if growth <= 1 or cfg.train.max_steps is None:
        return cfg
    return cfg.model_copy(update={"train": cfg.train.model_copy(
        update={"max_steps": math.ceil(cfg.train.max_steps * growth)})})


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
