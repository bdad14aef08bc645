"""`strategy: fewshot`, few-shot curves: each start (the config's model with its method freshly applied, or a run's
trained weights: a multi-task run, a meta-learned one) adapted to each target task of a family on k of its examples,
drawn with several seeds, then scored on the task's test set; beside them, in-context learning (the k examples in the
prompt, nothing trained), whose k = 0 is zero-shot.

Each cell (start, task, k, seed) is a sub-run of its own under cells/ (its result.json marks it done: `--resume`
skips the finished ones). An adaptation is one phase of the one loop (`train.optimizer` at `train.lr`,
`strategy.steps` steps of `train.batch_size` drawn from the k examples), from the start's weights each time. The
score is exact match by teacher forcing (`evaluation.forced`), and each cell records the prompt tokens an answer
costs (in-context learning pays for its k examples at every answer). The run's eval.json holds the table
(`summary`), and fewshot.md, .html and .png show it (`reports.fewshot`)."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from tuneforge.config import LoadedConfig
from tuneforge.data.dataset import TrainExample, encode_examples
from tuneforge.data.family import FamilyTask, TaskFamily, family_for
from tuneforge.data.formats import Example
from tuneforge.engine import checkpoint
from tuneforge.engine.console import Metrics, RunConsole
from tuneforge.engine.loop import LoopState, train_loop
from tuneforge.engine.session import Prepared, Session, loop_inputs, open_session
from tuneforge.errors import ConfigError
from tuneforge.evaluation.forced import forced_exact_match
from tuneforge.methods import get_method
from tuneforge.models.load import load_model, load_tokenizer
from tuneforge.reports.fewshot import write_report
from tuneforge.runs.recipe import read_recipe
from tuneforge.runs.run import Run, RunResult
from tuneforge.runs.trained import require_run_dir
from tuneforge.strategies.base import Strategy
from tuneforge.strategies.params import FewshotParams

CELLS = "cells"
IN_CONTEXT = "in-context"


def run(loaded: LoadedConfig, params: FewshotParams, *, resume: bool = False, force: bool = False,
        quiet: bool = False) -> RunResult:
    cfg, console = loaded.run, RunConsole(quiet=quiet)
    recipe = read_recipe(loaded)
    family = family_for(loaded, params.family, params.split)  # k, seeds and starts checked before anything loaded
    starts = {name: _start_dir(loaded, path) for name, path in params.starts.items()}
    with Run.open(loaded, console, resume=resume, force=force, checkpoints=CELLS) as run:
        tokenizer = load_tokenizer(cfg.model)
        tests = {task: _encoded(family.tasks[task].tests()[:params.max_test], tokenizer, cfg)
                 for task in family.targets}
        run.start(tokenizer, strategy={"name": "fewshot", **params.model_dump(mode="json")})
        rows: list[dict] = []
        with run.logging():
            for name, start in starts.items():
                session = open_session(loaded, recipe, console)
                if start is not None:
                    checkpoint.restore_trainable(session.model, _trained_weights(loaded, start), str(start))
                initial = checkpoint.trainable_state(session.model)
                for task, k, seed in _grid(family, params):
                    cell = run.phase(CELLS, name, task, f"k{k}-seed{seed}")
                    if not cell.done:
                        checkpoint.restore_trainable(session.model, initial, "the start's weights")
                        support = _encoded(family.tasks[task].support(k, seed), tokenizer, cfg)
                        if support:
                            _adapt(loaded, session, support, tokenizer, cell.checkpoints, params.steps, seed)
                        cell.finish(_score(session, tests[task], tokenizer.pad_token_id) | {"start": name, "task": task,
                                    "k": k, "seed": seed}, {})
                    rows.append(_said(console, cell.result()))
            if params.in_context:
                session = open_session(loaded, recipe, console)
                for task, k, seed in _grid(family, params):
                    cell = run.phase(CELLS, IN_CONTEXT, task, f"k{k}-seed{seed}")
                    if not cell.done:
                        prompts = _in_context(family.tasks[task], k, seed, params.max_test)
                        encoded, stats = encode_examples(prompts, tokenizer, cfg.data, apply_drop_guard=False)
                        # k examples past the context: stated, not scored
                        scored = ({"skipped": f"the prompts exceed data.max_seq_len={cfg.data.max_seq_len}"}
                                  if stats.truncated or stats.dropped else _score(session, encoded,
                                                                                  tokenizer.pad_token_id))
                        cell.finish(scored | {"start": IN_CONTEXT, "task": task, "k": k, "seed": seed}, {})
                    rows.append(_said(console, cell.result()))
        result = run.complete({"steps": 0, "cells": len(rows)}, {}, evaluation={"fewshot": summary(rows)})
    write_report(result.run_dir)
    return result


def _said(console: RunConsole, row: dict) -> dict:
    score = row.get("skipped") or f"exact match {row['exact_match']:.1f}% of {row['questions']}"
    console.info(f"{row['start']} on {row['task']}, k={row['k']}, seed {row['seed']}: {score}")
    return row


def _grid(family: TaskFamily, params: FewshotParams):
    for task in family.targets:
        for k in params.k:
            for seed in family.tasks[task].seeds_for(k, params.seeds):  # k = 0 draws nothing: one seed
                yield task, k, seed


def check(loaded: LoadedConfig, params: FewshotParams) -> TaskFamily:
    """Before anything loads: a family that reads, every k drawable `seeds` times from every target, and starts that
    are finished runs of this config's method on its model."""
    family = family_for(loaded, params.family, params.split)
    for task in family.targets:
        for k in params.k:
            if len(family.tasks[task].seeds_for(k, params.seeds)) < (params.seeds if k else 1):
                raise ConfigError(f"{loaded.where('strategy', 'k')}: target {task} cannot give {params.seeds} draws "
                                  f"of k={k} examples (it has {family.tasks[task].size()} training records, or "
                                  "fewer k-shot files)\n  fix: lower k or strategy.seeds, or give the task more "
                                  "records")
    for name, path in params.starts.items():
        _start(loaded, name, path)
    return family


def _start_dir(loaded: LoadedConfig, path: str | None) -> Path | None:
    return Path(loaded.resolve_path(path)) if path is not None else None


def _start(loaded: LoadedConfig, name: str, path: str | None) -> Path | None:
    """A start's run directory, checked to hold the config's method on the config's model."""
    if path is None:
        return None
    run_dir = Path(loaded.resolve_path(path))
    cfg = require_run_dir(run_dir)
    if (cfg.method.name, cfg.model.path) != (loaded.run.method.name, loaded.run.model.path):
        raise ConfigError(f"{loaded.where('strategy', 'starts')}: start '{name}' ({run_dir}) trained "
                          f"{cfg.method.name} on {cfg.model.path}, but this config adapts {loaded.run.method.name} on "
                          f"{loaded.run.model.path}\n  fix: name runs of this config's method and model as starts")
    return run_dir


def _trained_weights(loaded: LoadedConfig, run_dir: Path) -> dict:
    """The start run's trained weights, by the names the session's model gives them."""
    method = get_method(loaded.run.method.name)
    return checkpoint.trainable_state(method.load(run_dir, lambda: load_model(loaded.run.model)))


def _encoded(examples: list[Example], tokenizer, cfg) -> list[TrainExample]:
    if not examples:
        return []
    return encode_examples(examples, tokenizer, cfg.data, apply_drop_guard=False)[0]


def _adapt(loaded: LoadedConfig, session: Session, support: list[TrainExample], tokenizer, checkpoints: Path,
           steps: int, seed: int) -> None:
    """One adaptation: `steps` optimizer steps of the one loop on the support set, a fresh optimizer, no checkpoint."""
    train = loaded.run.train.model_copy(update={"max_steps": steps, "seed": seed, "save_every": 0, "eval_every": 0,
                                                "batch_size": min(loaded.run.train.batch_size, len(support)),
                                                "warmup_steps": 0})
    cfg = loaded.run.model_copy(update={"train": train})
    prepared = Prepared(support, [], [], tokenizer, True, {})
    inputs = loop_inputs(session, prepared, cfg, Metrics(), RunConsole(silent=True), checkpoints, lambda **_: ({}, []))
    train_loop(inputs, LoopState())


def _score(session: Session, tests: list[TrainExample], pad_id: int) -> dict:
    hits = forced_exact_match(session.model, tests, pad_id, autocast=session.scoring)
    prompt = [sum(1 for label in e.encoded.labels if label == -100) for e in tests]
    return {"exact_match": 100.0 * sum(hits) / max(len(hits), 1), "questions": len(hits),
            "prompt_tokens": statistics.fmean(prompt) if prompt else 0.0}


def _in_context(task: FamilyTask, k: int, seed: int, max_test: int) -> list[Example]:
    """Each test question asked after the k examples of (k, seed), as earlier turns of the conversation (after the
    task's instruction, said once); only the answer to the test question is scored."""
    def split(example: Example) -> tuple[tuple, tuple]:
        system = example.messages[:1] if example.messages[0]["role"] == "system" else ()
        return system, example.messages[len(system):]

    turns = tuple(m for shot in task.support(k, seed) for m in split(shot)[1])
    examples = []
    for e in task.tests()[:max_test]:
        system, question = split(e)
        examples.append(Example(e.source, e.where, messages=system + turns + question,
                                prompt_turns=len(system) + len(turns), task=e.task))
    return examples


def summary(rows: list[dict]) -> list[dict]:
    """Per start, task and k: the mean exact match over the seeds, the worst seed, the 95% interval of the mean
    (Student's t over the seeds), and the prompt tokens per answer; then the same averaged over the tasks."""
    from scipy import stats

    scored = [row for row in rows if "skipped" not in row]
    per_task: dict[tuple, list[dict]] = {}
    for row in scored:
        per_task.setdefault((row["start"], row["task"], row["k"]), []).append(row)
    averaged: dict[tuple, list[dict]] = {}  # per start, k and seed: the mean over the tasks
    for (start, k, seed) in sorted({(r["start"], r["k"], r["seed"]) for r in scored}):
        cells = [r for r in scored if (r["start"], r["k"], r["seed"]) == (start, k, seed)]
        averaged.setdefault((start, "mean", k), []).append(
            {"exact_match": statistics.fmean(c["exact_match"] for c in cells),
             "prompt_tokens": statistics.fmean(c["prompt_tokens"] for c in cells)})
    out = []
    for (start, task, k), cells in [*sorted(per_task.items()), *sorted(averaged.items())]:
        scores = [c["exact_match"] for c in cells]
        mean = statistics.fmean(scores)
        half = (stats.t.ppf(0.975, len(scores) - 1) * statistics.stdev(scores) / math.sqrt(len(scores))
                if len(scores) > 1 else 0.0)
        out.append({"start": start, "task": task, "k": k, "seeds": len(scores), "mean": mean, "worst": min(scores),
                    "ci95": [mean - half, mean + half],
                    "prompt_tokens": statistics.fmean(c["prompt_tokens"] for c in cells)})
    return out


STRATEGY = Strategy("fewshot", "few-shot curves: starts adapted to a family's target tasks on k examples over "
                    "seeds, beside in-context and zero-shot", FewshotParams, run, needs_train_data=False,
                    requires=check)
