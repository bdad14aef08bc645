"""One phase trained into one run directory: what `strategy: single` is, and what a per-task multitask run does
for each task's own sub-run. The run's life (lock, resume and its identity, run.json, eval.json) is `runs.Run`'s;
the training pieces come from `engine.session`.

Started by torchrun (or `--nproc N`), every process runs this: the main one writes, the others load the same data
and model, train their share of each step, and stop after training (see `engine.distributed`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from tuneforge.config import LoadedConfig
from tuneforge.engine import checkpoint, distributed
from tuneforge.engine.console import RunConsole
from tuneforge.engine.loop import LoopState, train_loop
from tuneforge.engine.session import loop_inputs, make_evaluator, open_session, prepare_data
from tuneforge.objectives import Objective
from tuneforge.runs.identity import fingerprint_of
from tuneforge.runs.recipe import read_recipe
from tuneforge.runs.run import Run, RunResult


def train_phase(loaded: LoadedConfig, console: RunConsole, *, resume: bool = False, force: bool = False,
                world: distributed.World | None = None, prepare: Callable = prepare_data,
                trained_as: Callable[[Objective], Objective] | None = None, record: dict | None = None) -> RunResult:
    """`prepare(loaded, console, recipe)` gives the data (the config's, by default); `trained_as` turns the recipe's
    objective into the one the loop trains (meta-learning's episodes), the recipe's own serving evaluation and
    saving; `record` is what run.json says of the strategy."""
    cfg, world = loaded.run, world or distributed.world()
    recipe = read_recipe(loaded)
    if world.active:  # said once, by the main process
        world.from_main(lambda: distributed.check_world(world, cfg.train.grad_accum, bool(recipe.rewards),
                                                        loaded.where("train")))
    with Run.open(loaded, console, resume=resume, force=force, world=world) as run:
        resume_from = run.require_checkpoint()
        prepared = prepare(loaded, console, recipe)
        run.identify(fingerprint_of(cfg, prepared))
        with run.guard("loading the model"):
            session = open_session(loaded, recipe, console, prepared.in_memory(), prepared.labels)
        evaluate = make_evaluator(session, prepared, cfg)
        run.start(prepared.tokenizer, prepared.labels, **session.summary(), data=prepared.stats,
                  **({"processes": world.size} if world.active else {}), **({"strategy": record} if record else {}))
        if cfg.eval.compare_base:
            run.evaluate_before(evaluate)
        with run.logging(checkpoint.step_of(resume_from)) as metrics:
            inputs = loop_inputs(session, prepared, cfg, metrics, console, run.checkpoints, evaluate)
            if trained_as is not None:
                inputs = dataclasses.replace(inputs, objective=trained_as(inputs.objective))
            state = train_loop(inputs, LoopState(fingerprint=run.fingerprint), resume_from)
            wall = run.wall_s()
            if world.sharded:  # the trained weights gathered whole; the main process rebuilds the model with them
                trained = checkpoint.trainable_state(session.model)
                if world.main:
                    session = open_session(loaded, recipe, console, labels=prepared.labels)
                    checkpoint.restore_trainable(session.model, trained, "the gathered FSDP shards")
                    evaluate = make_evaluator(session, prepared, cfg)
            if not world.main:  # the main process saves, evaluates and writes the results
                return RunResult(run.dir, state.step)
            run.save(session.model, recipe)
            after, samples = run.score(evaluate, state.step)
            return run.complete({"steps": state.step, "wall_s": wall, "skipped_steps": state.skipped_steps,
                                 "stopped_early": state.stopped_early}, after, samples)
