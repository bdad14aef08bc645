"""`strategy: single`, what `tuneforge train` does: one phase, one run directory. The order keeps the user's
time and disk safe: the config and data are checked first (seconds, nothing written), the run directory is
locked and its resume identity checked, then the model loads, then the directory is written, trained into,
evaluated, saved. The run directory's policy lives here: the lock, resume and its identity checks
(fingerprints), run.json and eval.json; the training pieces come from `engine.session`.

Started by torchrun (or `--nproc N`), every process runs this function: the main one (rank 0) holds the lock,
decides and writes, and hands its decisions to the others (`World.from_main`); they load the same data and
model, train their share of each step, and stop after training (see `engine.distributed`)."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from tuneforge.config import LoadedConfig, dump_yaml, load_config
from tuneforge.engine import checkpoint, distributed, paths
from tuneforge.engine.lock import run_lock
from tuneforge.engine.loop import LoopState, train_loop
from tuneforge.engine.resources import resource_guard
from tuneforge.engine.session import Prepared, loop_inputs, make_evaluator, open_session, prepare_data, read_recipe
from tuneforge.engine.tracking import METRICS_FILE, MetricsLog, NullMetrics, RunConsole, flat_scores
from tuneforge.errors import CheckpointError, RunDirError
from tuneforge.strategies import Strategy
from tuneforge.strategies.params import SingleParams

CHECKPOINTS = "checkpoints"
EVAL_FILE = "eval.json"
RUN_FILE = "run.json"


@dataclass
class RunResult:
    run_dir: Path
    steps: int
    train: dict = field(default_factory=dict)
    eval_before: dict = field(default_factory=dict)
    eval_after: dict = field(default_factory=dict)


def run(loaded: LoadedConfig, params: SingleParams | None = None, *, resume: bool = False, force: bool = False,
        quiet: bool = False) -> RunResult:
    cfg = loaded.run
    world = distributed.join_world(cfg.train.collective_timeout_s, cfg.train.distributed, loaded.where("train"))
    console = RunConsole(quiet=quiet, silent=not world.main)
    recipe = read_recipe(loaded)
    if world.active:  # said once, by the main process
        world.from_main(lambda: distributed.check_world(world, cfg.train.grad_accum, bool(recipe.rewards),
                                                        loaded.where("train")))
    run_dir = resolve_run_dir(loaded)
    main = world.main

    def guard(doing: str) -> AbstractContextManager:  # out of memory or disk: say what to change
        return resource_guard(doing, run_dir / CHECKPOINTS, cfg.train)

    # a second run on the same directory stops here, before it loads anything
    with run_lock(run_dir) if main else nullcontext():
        resume_from = world.from_main(lambda: _check_run_dir(
            run_dir, resume, cfg.output.overwrite, run_inputs(loaded) if cfg.output.overwrite and not resume else ()))
        prepared = prepare_data(loaded, console, recipe.objective)
        fingerprint = fingerprint_of(cfg, prepared)
        if resume_from is not None:
            world.from_main(lambda: check_same_run(run_dir, read_json(resume_from / "state.json").get(
                "fingerprint", {}), cfg, fingerprint, force, console))
        with guard("loading the model"):
            session = open_session(loaded, recipe, console, prepared.train + prepared.test, prepared.labels)
        status = {"fingerprint": fingerprint, **session.summary(), "data": prepared.stats,
                  **({"processes": world.size} if world.active else {})}
        evaluate = make_evaluator(session, prepared, cfg)

        def start_run_dir() -> dict:
            with guard("creating the run directory"):
                create_run_dir(run_dir, resume_from is not None, cfg.output.overwrite)
                (run_dir / "config.yaml").write_text(dump_yaml(cfg))
                prepared.tokenizer.save_pretrained(run_dir / "tokenizer")
                if prepared.labels is not None:
                    prepared.labels.write(run_dir)
                write_json(run_dir / RUN_FILE, {"status": "training", **status})
            if cfg.eval.compare_base and not resume_from:
                with guard("evaluating the base model"):
                    return evaluate_base(evaluate, run_dir, console)
            return {}

        eval_before = world.from_main(start_run_dir)
        metrics = (MetricsLog(run_dir, cfg, resume_step=step_of(resume_from)) if main
                   else NullMetrics())
        if eval_before:  # the base model's scores, a row like every evaluation's
            metrics.log(0, "eval_before", eval_before)
        started = time.perf_counter()
        try:
            inputs = loop_inputs(session, prepared, cfg, metrics, console, run_dir / CHECKPOINTS, evaluate)
            state = train_loop(inputs, LoopState(fingerprint=status["fingerprint"]), resume_from)
            wall = time.perf_counter() - started
            if world.sharded:  # the trained weights gathered whole; the main process rebuilds the model with them
                trained = checkpoint.trainable_state(session.model)
                if main:
                    session = open_session(loaded, recipe, console, labels=prepared.labels)
                    checkpoint.restore_trainable(session.model, trained, "the gathered FSDP shards")
                    evaluate = make_evaluator(session, prepared, cfg)
            if not main:  # the main process saves, evaluates and writes the results
                return RunResult(run_dir, state.step)
            checkpoint.require_finite(checkpoint.trainable_state(session.model), "the trained weights")
            with guard("saving the trained weights"):
                recipe.method.save(session.model, run_dir)
                if recipe.objective.save:
                    recipe.objective.save(session.model, run_dir)
            with guard("evaluating the trained model"):
                eval_after, samples = evaluate(generate=True)
                if eval_after:
                    metrics.log(state.step, "final_eval", eval_after)
            if resume_from is not None:
                eval_before = read_json(run_dir / EVAL_FILE).get("before", {})
            summary = {"steps": state.step, "wall_s": round(wall, 1), "skipped_steps": state.skipped_steps,
                       "stopped_early": state.stopped_early}
            with guard("writing the run's results"):
                write_json(run_dir / EVAL_FILE, {"before": eval_before, "after": eval_after, "samples": samples[:50]})
                weights = {str(p.relative_to(run_dir)): checkpoint.sha256_of(p) for p in
                           sorted(run_dir.glob("**/*.safetensors")) if p.relative_to(run_dir).parts[0] != CHECKPOINTS}
                write_json(run_dir / RUN_FILE, {"status": "complete", **status, "train": summary,
                                                 "weights_sha256": weights})
        except BaseException:
            metrics.close(failed=True)
            raise
        metrics.close(artifacts=[run_dir / EVAL_FILE, run_dir / RUN_FILE, run_dir / "config.yaml",
                                 *sorted(run_dir.glob("*.png")), run_dir / METRICS_FILE])
        return RunResult(run_dir, state.step, summary, eval_before, eval_after)


def evaluate_base(evaluate, run_dir: Path, console: RunConsole) -> dict:
    """Scores of the untrained model, saved at once so a resumed run can still report before -> after."""
    console.info("evaluating the base model ...")
    scores = evaluate(generate=True)[0]
    console.info("before: " + format_scores(scores))
    write_json(run_dir / EVAL_FILE, {"before": scores})
    return scores


def resolve_run_dir(loaded: LoadedConfig) -> Path:
    if loaded.run.output.dir:
        return Path(loaded.run.output.dir)
    name = loaded.source.stem if loaded.source else "run"
    return Path("runs") / name


def _check_run_dir(run_dir: Path, resume: bool, overwrite: bool, inputs: Sequence[Path] = ()) -> Path | None:
    """Decide, before anything is written, whether this run starts fresh or resumes; None = fresh."""
    if not check_run_dir(run_dir, resume, overwrite, inputs):
        return None
    found, skipped = checkpoint.latest_checkpoint(run_dir / CHECKPOINTS)
    if found is None:
        detail = f" (skipped: {'; '.join(skipped)})" if skipped else ""
        raise CheckpointError(f"--resume: no complete checkpoint in {run_dir / CHECKPOINTS}{detail}\n  fix: "
                              "start again with output.overwrite=true (and train.save_every > 0 so the run "
                              "writes checkpoints)")
    return found


def check_run_dir(run_dir: Path, resume: bool, overwrite: bool, inputs: Sequence[Path] = ()) -> bool:
    """Before anything is written: may this run start (False) or resume (True) in `run_dir`? A resume needs an
    unfinished run there (its half-written checkpoints are removed); a fresh start an empty directory, or
    `overwrite` and nothing the run reads inside it."""
    paths.require_writable_dir(run_dir, "output.dir")
    if resume:
        paths.refuse_escaping_links(run_dir, "run directory")  # before anything in it is deleted or written
        if not run_dir.is_dir():
            raise CheckpointError(f"--resume: run directory {run_dir} does not exist\n  fix: start the run without "
                                  "--resume, or set output.dir to the run to continue")
        status = read_json(run_dir / RUN_FILE).get("status")
        if status == "complete":
            raise CheckpointError(f"--resume: the run in {run_dir} is already complete\n  fix: start a new run "
                                  "with another output.dir, or set output.overwrite=true")
        for root in run_dir.glob(f"**/{CHECKPOINTS}"):
            checkpoint.remove_unfinished(root)
        return True
    if run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
        raise RunDirError(f"output directory {run_dir} already holds a run\n  fix: pass --resume to continue it, "
                          "set output.overwrite=true to replace it, or choose another output.dir")
    if overwrite:
        paths.refuse_unsafe_replace(run_dir, RUN_FILE, "output.dir", inputs)
    return False


def run_inputs(loaded: LoadedConfig) -> list[Path]:
    """The files a run reads that must survive it: the config, the data, a local model."""
    cfg = loaded.run
    specs = [*cfg.data.train, *(cfg.data.test or [])]
    candidates = [loaded.source, *(loaded.resolve_path(s.path) for s in specs), loaded.resolve_path(cfg.model.path)]
    return [Path(c) for c in candidates if c is not None and Path(c).exists()]


def create_run_dir(run_dir: Path, resuming: bool, overwrite: bool) -> None:
    if not resuming and overwrite and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)


def fingerprint_of(cfg, prepared: Prepared) -> dict:
    data = hashlib.sha256()
    for item in prepared.train:
        for sequence in item.sequences:  # a preference pair's rejected side is data too
            data.update(json.dumps(sequence.input_ids).encode())
            data.update(json.dumps(sequence.labels).encode())
    tokenizer = prepared.tokenizer.backend_tokenizer.to_str() + json.dumps(prepared.tokenizer.special_tokens_map,
                                                                           sort_keys=True)
    training = _training_config(cfg)
    return {"data_sha256": data.hexdigest(),
            "config_sha256": hashlib.sha256(json.dumps(training, sort_keys=True).encode()).hexdigest(),
            "tokenizer_sha256": hashlib.sha256(tokenizer.encode()).hexdigest(),
            # the settings themselves, so a resume can name what changed even if config.yaml was edited
            "training_config": training}


def _training_config(cfg) -> dict:
    """What decides the trained weights: everything but evaluation and output settings and how processes share
    the work (so a run resumes with any number of processes), and the strategy when it is plain `single` (so
    runs from before strategies existed resume)."""
    sharing = {"collective_timeout_s", "distributed"}
    data = cfg.model_dump(mode="json", exclude={"eval": True, "output": True, "train": sharing})
    if data.get("strategy") == {"name": "single"}:
        del data["strategy"]
    return data


def check_same_run(run_dir: Path, saved: dict, cfg, fingerprint: dict, force: bool, console: RunConsole) -> None:
    """A resume continues the run that wrote the checkpoint (whose fingerprint is `saved`): the same data,
    training config and tokenizer, or it stops naming what changed (unless forced)."""
    changed = [name for name in ("data", "config", "tokenizer")
               if f"{name}_sha256" in saved and saved[f"{name}_sha256"] != fingerprint[f"{name}_sha256"]]
    if not changed:
        return
    details = []
    if "data" in changed:
        details.append("the training data (its tokens or labels) changed")
    if "config" in changed:
        before = saved.get("training_config") or _training_config(load_config(run_dir / "config.yaml").run)
        keys = _changed_keys(before, _training_config(cfg))
        details.append("config keys changed: " + (", ".join(keys) or "(a default value)"))
    if "tokenizer" in changed:
        details.append("the tokenizer changed")
    message = f"--resume: this is not the run in {run_dir}: " + "; ".join(details)
    if force:
        console.info(f"warning: {message}; continuing because of --force")
        return
    raise CheckpointError(f"{message}\n  fix: resume with the original config and data, start a new run in "
                          "another output.dir, or pass --force to continue with the changes")


def _changed_keys(old, new, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [key for name in sorted(set(old) | set(new))
                for key in _changed_keys(old.get(name), new.get(name), f"{prefix}{name}.")]
    return [] if old == new else [f"{prefix.rstrip('.')} ({old!r} -> {new!r})"]


def step_of(path: Path | None) -> int | None:
    return int(path.name.split("-")[-1]) if path is not None else None


def format_scores(scores: dict) -> str:
    return "  ".join(f"{k} {v:.4g}" for k, v in flat_scores(scores).items())


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


STRATEGY = Strategy("single", "one phase: train, evaluate and save one run directory (tuneforge train)",
                    SingleParams, run, data_parallel=True)
