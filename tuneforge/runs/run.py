"""A run directory's life, written once for every strategy. The order keeps the user's time and disk safe: the
directory is locked and it is decided whether the run starts fresh or resumes (nothing loaded, nothing
written); the strategy reads its data and the run is identified (a resume must continue the same run); the
model loads; only then is the directory written (`start`), the base model scored (`evaluate_before`), the
phases trained (each logging its rows and checkpoints in its own folder: the run's, or a sub-run's such as a
continual task), the weights saved (`save`) and the results recorded (`complete`). A run that ends by an error
records it: run.json says `failed` and why, or `interrupted`; `--resume` continues either.

Started by torchrun (or `--nproc N`), every process of a data-parallel strategy opens the run: the main one
(rank 0) holds the lock, decides and writes, and hands its decisions to the others (`World.from_main`)."""

from __future__ import annotations

import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from pathlib import Path

from safetensors.torch import load_file, save_file

from tuneforge.config import LoadedConfig, dump_yaml
from tuneforge.engine import checkpoint, distributed
from tuneforge.engine.console import Metrics, RunConsole, flat_scores, format_scores
from tuneforge.engine.resources import resource_guard
from tuneforge.errors import CheckpointError, RunDirError
from tuneforge.runs import paths
from tuneforge.runs.identity import check_same_run, weights_record
from tuneforge.runs.layout import (
    CHECKPOINTS,
    COMPLETE,
    CONFIG_FILE,
    EVAL_FILE,
    FAILED,
    INTERRUPTED,
    METRICS_FILE,
    RESULT_FILE,
    RUN_FILE,
    STOPPED,
    TOKENIZER_DIR,
    TRAINING,
    read_json,
    status_of,
    write_json,
)
from tuneforge.runs.lock import run_lock
from tuneforge.runs.metrics import MetricsLog, check_trackers

STATE_FILE = "state.safetensors"  # a finished phase's end state (its trained weights and a strategy's tensors)


class Stopped(Exception):
    """Raised (by a metrics watcher, `runs.metrics.watching`) to end a started run on purpose: run.json says
    `stopped` and the reason; its checkpoints stay."""


@dataclass
class RunResult:
    """Where a run went and what it measured: its training summary and its scores before and after training."""

    run_dir: Path
    steps: int
    train: dict = field(default_factory=dict)
    eval_before: dict = field(default_factory=dict)
    eval_after: dict = field(default_factory=dict)

    def table(self) -> list[str]:
        """The after scores beside the before ones, as lines; with tasks, their mean first, then each task's."""
        before, after = flat_scores(self.eval_before), flat_scores(self.eval_after)
        if not after:
            return []
        width = max(12, *(len(name) for name in after))
        lines = [f"{'metric':>{width}}  {'before':>9}  {'after':>9}  {'change':>9}"]
        for name, value in after.items():
            if name in before:
                lines.append(f"{name:>{width}}  {before[name]:9.3f}  {value:9.3f}  {value - before[name]:+9.3f}")
            else:
                lines.append(f"{name:>{width}}  {'':>9}  {value:9.3f}")
        return lines


class Phase:
    """A part of a run that trains: the run itself (checkpoints/ and metrics.jsonl at its top) or a sub-run in a
    folder of its own (a continual task: its checkpoints and metrics while it trains, then its end state and
    result.json, which marks it finished)."""

    results: tuple[str, ...] = (RESULT_FILE,)  # what a tracker keeps of the phase besides its metrics

    def __init__(self, run: Run, directory: Path):
        self.run, self.dir = run, directory

    @property
    def checkpoints(self) -> Path:
        return self.dir / CHECKPOINTS

    @property
    def done(self) -> bool:
        return (self.dir / RESULT_FILE).is_file()

    def result(self) -> dict:
        return read_json(self.dir / RESULT_FILE)

    def resume_point(self) -> Path | None:
        """The newest intact checkpoint to continue from when the run resumes (None when it starts afresh)."""
        return checkpoint.latest_checkpoint(self.checkpoints)[0] if self.run.resuming else None

    @contextmanager
    def logging(self, resume_step: int | None = None) -> Iterator[Metrics]:
        """The phase's metrics log (and trackers) while it trains, rows after `resume_step` dropped; closed
        with the phase's result files, or as failed when the phase raises. The other processes of a distributed
        run log nowhere."""
        run = self.run
        self.dir.mkdir(parents=True, exist_ok=True)
        run.clock = time.perf_counter()
        metrics = (MetricsLog(self.dir, run.cfg, resume_step=resume_step, warn=run.console.info) if run.world.main
                   else Metrics())
        run.metrics = metrics
        if run.unlogged_before:  # the base model's scores, a row like every evaluation's
            metrics.log(0, "eval_before", run.before)
            run.unlogged_before = False
        try:
            yield metrics
        except BaseException:
            metrics.close(failed=True)
            raise
        finally:
            run.metrics = Metrics()
        metrics.close(artifacts=[self.dir / name for name in (*self.results, METRICS_FILE)]
                      + sorted(self.dir.glob("*.png")))

    def score(self, evaluate: Callable, step: int, doing: str = "evaluating the trained model") -> tuple[dict, list]:
        """The model's scores and samples now, logged as the phase's final evaluation."""
        with self.run.guard(doing):
            scores, samples = evaluate(generate=True)
        if scores:
            self.run.metrics.log(step, "final_eval", scores)
        return scores, samples

    def finish(self, result: dict, tensors: dict) -> None:
        """The phase's end state, then its result.json, which marks it finished (each written whole or not at
        all)."""
        with self.run.guard(f"saving the state of {self.dir.name}"):
            self.dir.mkdir(parents=True, exist_ok=True)  # a phase that trained nothing has no folder yet
            if tensors:  # a phase with no end state (a few-shot cell: its score is its result) writes none
                tmp = self.dir / (STATE_FILE + ".tmp")
                save_file({name: t.contiguous() for name, t in tensors.items()}, tmp)
                tmp.replace(self.dir / STATE_FILE)
            write_json(self.dir / RESULT_FILE, {**result, "fingerprint": self.run.fingerprint})

    def state(self) -> dict:
        return load_file(self.dir / STATE_FILE)


class Run(Phase):
    """One run directory, from `Run.open` to `complete`."""

    results = (EVAL_FILE, RUN_FILE, CONFIG_FILE)

    def __init__(self, loaded: LoadedConfig, console: RunConsole, world: distributed.World, run_dir: Path,
                 resuming: bool, force: bool, checkpoints: str):
        super().__init__(self, run_dir)
        self.loaded, self.cfg, self.console, self.world = loaded, loaded.run, console, world
        self.resuming, self.force, self.checkpoint_folder = resuming, force, checkpoints
        self.fingerprint: dict = {}
        self.record: dict = {}  # what run.json says besides its status
        self.before: dict = {}
        self.unlogged_before, self.started = False, False
        self.metrics: Metrics = Metrics()
        self.clock = time.perf_counter()
        self.stop_signal = _StopSignal(catch=False)

    @classmethod
    @contextmanager
    def open(cls, loaded: LoadedConfig, console: RunConsole, *, resume: bool = False, force: bool = False,
             world: distributed.World | None = None, checkpoints: str = CHECKPOINTS) -> Iterator[Run]:
        """Lock the run directory (a second run on it stops here, before it loads anything) and decide, before
        anything is written, whether the run starts fresh or resumes. `checkpoints`: the folder under which the
        strategy's phases keep their checkpoints (named by out-of-memory and out-of-disk messages)."""
        world = world or distributed.world()
        run_dir = resolve_run_dir(loaded)
        cfg = loaded.run
        with run_lock(run_dir) if world.main else nullcontext():
            inputs = run_inputs(loaded) if cfg.output.overwrite and not resume else ()
            resuming, notes = world.from_main(lambda: (check_run_dir(run_dir, resume, cfg.output.overwrite, inputs),
                                                       check_trackers(cfg, loaded.where("output", "trackers"))))
            for note in notes:
                console.info(note)
            run = cls(loaded, console, world, run_dir, resuming, force, checkpoints)
            try:
                yield run
            except BaseException as exc:
                run.ended_by(exc)
                raise
            finally:
                run.stop_signal.close()

    def guard(self, doing: str) -> AbstractContextManager:
        """Out of memory or disk while `doing`: say what to change and where the run can continue from."""
        return resource_guard(doing, self.dir / self.checkpoint_folder, self.cfg.train)

    def require_checkpoint(self, phases: Sequence[Phase] = ()) -> Path | None:
        """The checkpoint a resumed run continues from (None when it starts afresh). A resume needs somewhere to
        continue from: a checkpoint of the run, or with `phases`, a finished phase or a checkpoint of one."""
        if not self.resuming:
            return None
        found = self.world.from_main(lambda: progress([p.checkpoints for p in phases or [self]],
                                                      [p.done for p in phases], self.dir / self.checkpoint_folder))
        return None if phases else found

    def identify(self, fingerprint: dict) -> None:
        """What this run is; a resume must continue the run recorded in run.json (or `--force` says go on)."""
        self.fingerprint = fingerprint
        if self.resuming:
            saved = read_json(self.dir / RUN_FILE).get("fingerprint", {})
            self.world.from_main(lambda: check_same_run(self.dir, saved, self.cfg, fingerprint, self.force,
                                                        self.console))

    def start(self, tokenizer=None, labels=None, **record) -> None:
        """Create the directory (a fresh run replaces what `output.overwrite` allows) or reopen it (a resume), with
        the config, the tokenizer, a classifier's labels and run.json saying `training`."""
        self.record = {**({"fingerprint": self.fingerprint} if self.fingerprint else {}), **record}

        def write() -> None:
            with self.guard("creating the run directory"):
                if not self.resuming and self.cfg.output.overwrite and self.dir.exists():
                    shutil.rmtree(self.dir)
                self.dir.mkdir(parents=True, exist_ok=True)
                (self.dir / CONFIG_FILE).write_text(dump_yaml(self.cfg))
                if tokenizer is not None:
                    tokenizer.save_pretrained(self.dir / TOKENIZER_DIR)
                if labels is not None:
                    labels.write(self.dir)
                write_json(self.dir / RUN_FILE, {"status": TRAINING, **self.record})

        self.world.from_main(write)
        self.started = True
        if not self.world.active:  # the processes of a distributed run are stopped by their launcher, as ever
            self.stop_signal = _StopSignal()

    def evaluate_before(self, evaluate: Callable, what: str = "the base model") -> dict:
        """The scores of the model before training, saved at once in eval.json so that a resumed run still reports
        before -> after (it reads them back), and logged as the first row of the metrics."""
        def compute() -> tuple[dict, bool]:
            saved = read_json(self.dir / EVAL_FILE).get("before") if self.resuming else None
            if saved:
                return saved, False
            self.console.info(f"evaluating {what} ...")
            with self.guard(f"evaluating {what}"):
                scores = evaluate(generate=True)[0]
            self.console.info("before: " + format_scores(scores))
            write_json(self.dir / EVAL_FILE, {"before": scores})
            return scores, True

        self.before, fresh = self.world.from_main(compute)
        if fresh and self.before and isinstance(self.metrics, MetricsLog):  # a phase is logging now (a federation)
            self.metrics.log(0, "eval_before", self.before)
        else:
            self.unlogged_before = fresh and bool(self.before)
        return self.before

    def phase(self, *parts: str) -> Phase:
        """A sub-run in its own folder (`phase(TASKS, "1-alpha")`)."""
        return Phase(self, self.dir.joinpath(*parts))

    def save(self, model, recipe, write: Callable[[Path], None] | None = None) -> None:
        """What the run trained, into the directory (nothing NaN or inf is ever saved): the method's weights and
        an objective's own parts (a reward head), or what `write` writes."""
        checkpoint.require_finite(checkpoint.trainable_state(model), "the trained weights")
        with self.guard("saving the trained weights"):
            if write is not None:
                write(self.dir)
                return
            recipe.method.save(model, self.dir)
            if recipe.objective.save:
                recipe.objective.save(model, self.dir)

    def complete(self, summary: dict, after: dict, samples: list | None = None, *, steps: int | None = None,
                 evaluation: dict | None = None, record: dict | None = None, before: dict | None = None
                 ) -> RunResult:
        """eval.json (before, after, samples and what a strategy adds) and run.json `complete` with the digests of
        the weights that produce the run's outputs (`identity.weights_record`). `before`: the scores before
        training where the run did not evaluate them itself (its sub-runs did). The main process alone completes a
        run (the others have stopped)."""
        self.before = self.before if before is None else before
        with self.guard("writing the run's results"):
            write_json(self.dir / EVAL_FILE, {"before": self.before, "after": after,
                                              **({"samples": samples[:50]} if samples is not None else {}),
                                              **(evaluation or {})})
            write_json(self.dir / RUN_FILE, {"status": COMPLETE, **self.record, "train": summary,
                                             **weights_record(self.dir, self.cfg.model), **(record or {})})
        return RunResult(self.dir, summary["steps"] if steps is None else steps, summary, self.before, after)

    def wall_s(self) -> float:
        """Seconds since the phase being logged began (this process's share: a resumed phase's own)."""
        return round(time.perf_counter() - self.clock, 1)

    def ended_by(self, exc: BaseException) -> None:
        """run.json says how a started run ended: `interrupted` (Ctrl-C, a stop signal), `stopped` on purpose and
        why (a sweep's pruner), or `failed` and why."""
        if not (self.started and self.world.main):
            return
        interrupted = isinstance(exc, KeyboardInterrupt)
        ended = {"status": INTERRUPTED if interrupted else STOPPED if isinstance(exc, Stopped) else FAILED}
        if isinstance(exc, Stopped):
            ended["reason"] = str(exc)
        elif not interrupted:
            ended["error"] = {"type": type(exc).__name__, "message": str(exc)[:4000]}
        with suppress(OSError):  # a full disk: the run's own error is what the user needs to see
            write_json(self.dir / RUN_FILE, {**self.record, **ended})


class _StopSignal:
    """While a started run trains, a stop request (SIGTERM: a service manager, a scheduler, a stop button) ends it
    as Ctrl-C does, so run.json says `interrupted`; before it starts (imports, reading data) and after it ends, the
    signal does what it did. Only the main thread can take a signal."""

    def __init__(self, catch: bool = True):
        self.previous = None
        if catch and threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, signal.default_int_handler)

    def close(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)
            self.previous = None


def finished(run_dir: Path) -> RunResult:
    """What a finished run recorded, as training returned it."""
    evaluation, record = read_json(Path(run_dir) / EVAL_FILE), read_json(Path(run_dir) / RUN_FILE)
    summary = record.get("train", {})
    return RunResult(Path(run_dir), summary.get("steps", 0), summary, evaluation.get("before", {}),
                     evaluation.get("after", {}))


def resolve_run_dir(loaded: LoadedConfig) -> Path:
    if loaded.run.output.dir:
        return Path(loaded.run.output.dir)
    name = loaded.source.stem if loaded.source else "run"
    return Path("runs") / name


def resume_point(run_dir: Path, resume: bool, overwrite: bool, inputs: Sequence[Path] = ()) -> Path | None:
    """Before anything is written: None when a one-phase run in `run_dir` starts fresh, else the newest intact
    checkpoint it continues from (a resume needs one)."""
    if not check_run_dir(run_dir, resume, overwrite, inputs):
        return None
    return progress([run_dir / CHECKPOINTS], [], run_dir / CHECKPOINTS)


def progress(checkpoints: Sequence[Path], done: Sequence[bool], where: Path) -> Path | None:
    """The newest intact checkpoint in the first of `checkpoints` that has one, unless a phase before it is `done`
    (then None); a resume without either has nothing to continue and is refused, naming the skipped ones."""
    skipped: list[str] = []
    for index, root in enumerate(checkpoints):
        found, passed = checkpoint.latest_checkpoint(root)
        skipped += passed
        if found is not None or (index < len(done) and done[index]):
            return found
    detail = f" (skipped: {'; '.join(skipped)})" if skipped else ""
    raise CheckpointError(f"--resume: no complete checkpoint{' and no finished phase' if done else ''} in {where}"
                          f"{detail}\n  fix: start again with output.overwrite=true (and train.save_every > 0 so the "
                          "run writes checkpoints)")


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
        if status_of(run_dir) == COMPLETE:
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
