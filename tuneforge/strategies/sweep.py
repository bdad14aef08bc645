"""`tuneforge sweep`: a hyperparameter search over one config, on Optuna (no hand-written search). The config's
`sweep:` section names the space (any config key: a range or choices, conditional on other keys), the objectives,
the budget, the sampler and the pruner (`config.SweepConfig`).

Each trial is the config with the sampled values, trained as `tuneforge train` would into a run directory of its own
under DIR/trials/ (so eval, chat and export take any trial). Its held-out evaluations are reported to the trial as
they are logged (`runs.metrics.watching`), and the pruner, a NaN or a diverging score end it on purpose
(`runs.run.Stopped`: run.json says `stopped` and why; Optuna records it pruned). A trial whose config or data is
refused, that runs out of memory or fails otherwise is recorded failed with its reason, and the sweep goes on.

The study lives in DIR/study.db (SQLite; or any Optuna storage URL, `storage`). A sweep killed at any moment
continues with `resume`: finished trials stay; a trial left running by a process that is gone (its run directory's
lock is free, or its Optuna heartbeat stopped on another machine) is marked failed and retried with the same values,
resuming its run directory from its newest checkpoint. Several worker processes (or machines sharing one storage
URL) take trials from the one study; Optuna gives each trial to one of them.

At the end the sweep writes trials.json (every trial: state, values, scores, steps trained, why it stopped),
best.yaml (the best trial's config, ready for `tuneforge train`) and the report (`reports.sweep`)."""

from __future__ import annotations

import importlib.util
import json
import math
import multiprocessing
import os
import socket
import statistics
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.config import Dimension, LoadedConfig, RunConfig, SweepConfig, dump_yaml, validation_message
from tuneforge.engine.console import flat_scores
from tuneforge.errors import ConfigError, RunDirError, TuneforgeError
from tuneforge.runs.layout import RUN_FILE, read_json, read_metrics, write_json
from tuneforge.runs.lock import is_locked
from tuneforge.runs.metrics import watching
from tuneforge.runs.run import RunResult, Stopped

STUDY = "tuneforge"
MAX_RETRY = 3  # a trial left running by a dead process is retried this often with the same values
STUDY_FILE, TRIALS_DIR, TRIALS_FILE, BEST_FILE = "study.db", "trials", "trials.json", "best.yaml"
COSTS = ("tokens_per_s", "peak_memory_gib", "trainable_parameters", "wall_s")
NAMED = ("method", "objective", "strategy")  # sections whose other keys belong to the entry their `name` picks


@dataclass
class SweepResult:
    dir: Path
    trials: list[dict]
    best: list[dict]  # the best trial (one objective) or the Pareto front

    def lines(self) -> list[str]:
        done = sum(1 for t in self.trials if t["state"] == "COMPLETE")
        pruned = sum(1 for t in self.trials if t["state"] == "PRUNED")
        failed = sum(1 for t in self.trials if t["state"] == "FAIL")
        lines = [f"sweep: {self.dir}  ({done} complete, {pruned} pruned, {failed} failed)"]
        for trial in self.best:
            scores = "  ".join(f"{k} {v:.4g}" for k, v in trial["scores"].items())
            lines.append(f"best: trial {trial['number']}  {scores}  {trial['params']}")
        return [*lines, f"best config: {self.dir / BEST_FILE}", f"report: {self.dir / 'sweep.md'}"]


def sweep(loaded: LoadedConfig, out: Path, *, resume: bool = False, workers: int = 1, storage: str | None = None,
          quiet: bool = False) -> SweepResult:
    import optuna

    spec = check_sweep(loaded)
    out = Path(out)
    url = storage or f"sqlite:///{out.resolve() / STUDY_FILE}"
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # each trial's end is said below
    study = _open_study(loaded, spec, out, url, resume)
    if resume:
        _retry_abandoned(study)
    if not _spent(study, spec) and workers == 1:
        _optimize(loaded, spec, out, url, workers, quiet)
    elif not _spent(study, spec):  # N processes alike; this one waits for them
        processes = [multiprocessing.get_context("spawn").Process(target=_worker, args=(loaded, out, url, workers,
                                                                                        quiet))
                     for _ in range(workers)]
        for process in processes:
            process.start()
        try:
            for process in processes:
                process.join()
        finally:
            for process in processes:
                if process.is_alive():
                    process.terminate()
    return _write_results(loaded, spec, out, _load(url))


def check_sweep(loaded: LoadedConfig) -> SweepConfig:
    """Before any training: every key of the space makes a valid config at each end of its range and with each
    choice (under its conditions), and every objective is a score the trials' evaluation gives or a cost."""
    spec = loaded.run.sweep
    if spec is None:
        raise ConfigError(f"{loaded.source or 'the config'} has no sweep: section\n  fix: add sweep: {{space: "
                          "{train.lr: {low: 1.0e-5, high: 1.0e-3, log: true}}, trials: 20}")
    for key, dimension in spec.space.items():
        where = loaded.where("sweep", "space", key)
        for other in dimension.when:
            if other not in spec.space and _value_at(loaded.run.model_dump(mode="json"), other) is _MISSING:
                raise ConfigError(f"{where}: its condition names {other}, which is neither searched nor set in the "
                                  "config\n  fix: name a key of the space or of the config")
        for value in _probes(dimension):
            values = {k: d.choices[0] if d.choices else d.low for k, d in spec.space.items() if k in dimension.when}
            values |= {k: v[0] for k, v in dimension.when.items()} | {key: value}
            try:
                trial_config(loaded, values, Path(os.devnull))
            except TuneforgeError as exc:
                raise ConfigError(f"{where}: {key}={value!r} does not make a valid config:\n  "
                                  f"{str(exc).replace(chr(10), chr(10) + '  ')}\n  (or change the range or "
                                  "choices, or add a `when:` condition)") from None
    evaluated = set(loaded.run.eval.metrics or []) | ({"perplexity"} if "loss" in (loaded.run.eval.metrics or [])
                                                       else set())
    for index, target in enumerate(spec.objectives):
        if target.metric not in COSTS and target.metric.rsplit("/", 1)[-1] not in evaluated:
            raise ConfigError(f"{loaded.where('sweep', 'objectives')}: objective {index + 1} is {target.metric!r}, "
                              f"which the trials do not measure (eval.metrics: {', '.join(sorted(evaluated))}; "
                              f"costs: {', '.join(COSTS)})\n  fix: add it to eval.metrics or choose one of these")
    if spec.sampler == "cmaes" and importlib.util.find_spec("cmaes") is None:
        raise ConfigError(f"{loaded.where('sweep', 'sampler')}: Optuna's CMA-ES sampler needs the cmaes package, "
                          "which is not installed\n  fix: pip install 'tuneforge[sweep]' (or cmaes), or sampler: tpe")
    if spec.sampler == "grid" and any(d.choices is None and d.step is None and not d.integer
                                      for d in spec.space.values()):
        raise ConfigError(f"{loaded.where('sweep', 'sampler')}: a grid needs choices, or a step or integer range, "
                          "for every key\n  fix: give each range a step, or choose sampler: tpe")
    if spec.pruner != "none" and not (loaded.run.train.eval_every or loaded.run.train.max_steps):
        raise ConfigError(f"{loaded.where('sweep', 'pruner')}: the pruner judges a trial at its evaluations, and "
                          "the config sets neither train.eval_every nor train.max_steps to place them by\n  fix: set "
                          "train.eval_every (or train.max_steps), or pruner: none")
    return spec


def trial_config(loaded: LoadedConfig, values: dict[str, Any], run_dir: Path) -> LoadedConfig:
    """The config with `values` set (a method, objective or strategy named anew keeps only the keys its own schema
    has) and its run directory `run_dir`, checked whole; no sweep section."""
    from tuneforge.strategies import checked

    raw = loaded.run.model_dump(mode="json", exclude={"sweep"})
    for section in NAMED:
        raw[section] = {"name": raw[section]["name"], **getattr(loaded.run, section).params()}
        renamed = values.get(f"{section}.name")
        if renamed is not None and renamed != raw[section]["name"]:
            own = _schema_keys(section, renamed)
            raw[section] = {"name": renamed, **{k: v for k, v in raw[section].items() if k in own}}
    for key, value in values.items():
        node = raw
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"sweep key {key}: {part} is not a section\n  fix: name a key inside a section")
        node[last] = value
    raw["output"] = {**raw["output"], "dir": str(run_dir), "overwrite": False}
    from pydantic import ValidationError

    try:
        run = RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(validation_message(exc)) from None
    return checked(LoadedConfig(run=run, source=loaded.source, base_dir=loaded.base_dir, lines=loaded.lines))


def metric_value(result: RunResult, name: str) -> float:
    """A trial's score (its final held-out evaluation) or cost (from its metrics and run record)."""
    scores = flat_scores(result.eval_after)
    if name in scores:
        return float(scores[name])
    rows = [r for r in read_metrics(result.run_dir) if r["kind"] == "train"]
    if name == "tokens_per_s":
        return statistics.fmean(r["tokens_per_s"] for r in rows if "tokens_per_s" in r)
    if name == "peak_memory_gib":
        return max(r.get("peak_memory_gib", 0.0) for r in rows)
    if name == "wall_s":
        return float(result.train.get("wall_s", 0.0))
    if name == "trainable_parameters":
        return float(read_json(result.run_dir / RUN_FILE)["trainable_parameters"])
    raise ConfigError(f"the trial's run {result.run_dir} has no score {name!r} (it has: {', '.join(scores)})\n  fix: "
                      "choose an objective its evaluation gives")


# the study ------------------------------------------------------------------------------------------------------


def _open_study(loaded: LoadedConfig, spec: SweepConfig, out: Path, url: str, resume: bool):
    import optuna

    identity = dump_yaml(loaded.run)
    existing = _load(url, missing_ok=True)
    if existing is None:
        if resume:
            raise RunDirError(f"{out}: no sweep to resume there\n  fix: run the sweep without --resume")
        if out.exists() and any(out.iterdir()) and url.startswith("sqlite:///"):  # (a shared storage: its own)
            raise RunDirError(f"{out} exists and is not empty\n  fix: choose another --out, or --resume a sweep "
                              "there")
        out.mkdir(parents=True, exist_ok=True)
        directions = [t.direction for t in spec.objectives]
        study = optuna.create_study(storage=_storage(url), study_name=STUDY, directions=directions,
                                    load_if_exists=True)
        study.set_user_attr("config", identity)
        with warnings.catch_warnings():  # metric names (what optuna-dashboard's axes say) are marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([t.metric for t in spec.objectives])
        return study
    if not resume:
        raise RunDirError(f"{out}: a sweep is there already\n  fix: --resume it, or choose another --out")
    if existing.user_attrs.get("config") != identity:
        raise ConfigError(f"{loaded.source or 'the config'}: it is not the config the sweep in {out} was started "
                          "with\n  fix: resume with the same config, or start a new sweep in another --out")
    return existing


def _storage(url: str):
    import optuna

    with warnings.catch_warnings():  # the heartbeat is marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(url, heartbeat_interval=30, grace_period=120,
                                          heartbeat_stale_trial_callback=_retry())


def _retry():
    """Optuna's retry of a stale trial: a new trial with the same values, naming the one it retries."""
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RetryHeartbeatStaleTrialCallback(MAX_RETRY)


def _load(url: str, missing_ok: bool = False):
    import optuna

    if missing_ok and url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        return None
    try:
        return optuna.load_study(study_name=STUDY, storage=_storage(url))
    except KeyError:
        if missing_ok:
            return None
        raise


def _retry_abandoned(study) -> None:
    """Trials this machine left running in a process that is gone (the trial's run directory is not locked) are
    failed now and retried (the heartbeat does the same for other machines' after its grace period)."""
    from optuna.trial import TrialState

    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        run_dir = trial.user_attrs.get("run_dir")
        if trial.user_attrs.get("host") == host and run_dir and not is_locked(Path(run_dir)):
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            _retry()(study, study._storage.get_trial(trial._trial_id))


def _finished(study) -> list:
    """Trials that count against the budget: complete, pruned, or failed and not retried."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = {_retried(t) for t in trials}
    return [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
            or (t.state == TrialState.FAIL and t.number not in retried)]


def _retried(frozen) -> int | None:
    """The number of the trial this one retries (None: a trial of its own)."""
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)


def _spent(study, spec: SweepConfig) -> bool:
    return spec.trials is not None and len(_finished(study)) >= spec.trials


def _worker(loaded: LoadedConfig, out: Path, url: str, workers: int, quiet: bool) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # each trial's end is said below
    _optimize(loaded, loaded.run.sweep, out, url, workers, quiet)


def _optimize(loaded: LoadedConfig, spec: SweepConfig, out: Path, url: str, workers: int, quiet: bool) -> None:
    import optuna
    import torch

    if workers > 1:  # the cores shared between the trials running at once
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    study = optuna.load_study(study_name=STUDY, storage=_storage(url), sampler=_sampler(spec), pruner=_pruner(spec))

    def said_and_stop_when_spent(study, trial) -> None:
        row = _row(trial, spec)
        done = "  ".join(f"{k} {v:.4g}" for k, v in row["scores"].items()) or row["reason"] or ""
        print(f"trial {trial.number} {trial.state.name.lower()}: {done}  {row['params']}", flush=True)
        if _spent(study, spec):
            study.stop()

    if not _spent(study, spec):
        study.optimize(lambda trial: _objective(trial, loaded, spec, out, quiet), timeout=spec.timeout_s,
                       callbacks=[said_and_stop_when_spent], catch=(Exception,), gc_after_trial=True)


def _sampler(spec: SweepConfig):
    import numpy as np
    import optuna

    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=spec.seed)
    if spec.sampler == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=spec.seed, warn_independent_sampling=False)
    if spec.sampler == "grid":
        grid = {key: d.choices if d.choices is not None else
                [_cast(d, v) for v in np.arange(d.low, d.high + (d.step or 1) / 2, d.step or 1)]
                for key, d in spec.space.items()}
        return optuna.samplers.GridSampler(grid, seed=spec.seed)
    with warnings.catch_warnings():  # multivariate TPE over groups (conditional keys) is marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=spec.seed, multivariate=True, group=True,
                                          n_startup_trials=startup_trials(spec.trials))


def startup_trials(trials: int | None) -> int:
    """TPE's random trials before it models the space: Optuna's 10, or a third of a smaller budget (at least 3),
    so that a sweep of 8 or 20 trials is not random search under another name."""
    return 10 if trials is None else min(10, max(3, trials // 3))


def _pruner(spec: SweepConfig):
    import optuna

    if spec.pruner == "none" or len(spec.objectives) > 1:  # Optuna prunes single-objective studies only
        return optuna.pruners.NopPruner()
    if spec.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if spec.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner()
    return optuna.pruners.SuccessiveHalvingPruner()


# one trial ------------------------------------------------------------------------------------------------------


def _objective(trial, loaded: LoadedConfig, spec: SweepConfig, out: Path, quiet: bool) -> list[float] | float:
    import optuna

    retried = _retried(trial.study._storage.get_trial(trial._trial_id))
    run_dir = (out / TRIALS_DIR / f"{trial.number if retried is None else retried:04d}").resolve()
    trial.set_user_attr("run_dir", str(run_dir))
    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("pid", os.getpid())
    first = spec.objectives[0]
    last_step = [0]

    def watch(step: int, kind: str, row: dict) -> None:
        last_step[0] = max(last_step[0], step)
        if kind != "eval":
            return
        value = flat_scores(row).get(first.metric)
        if value is None:
            return
        past = spec.diverge is not None and (value > spec.diverge if first.direction == "minimize"
                                             else value < spec.diverge)
        if not math.isfinite(value) or past:
            raise Stopped(f"{first.metric} {value:.4g} at step {step}: diverged")
        if len(spec.objectives) == 1:
            trial.report(value, step)
            if trial.should_prune():
                raise Stopped(f"pruned at step {step}: {first.metric} {value:.4g} (the {spec.pruner} pruner)")

    try:
        config = trial_config(loaded, _sample(trial, spec, loaded), run_dir)
        train = config.run.train
        if spec.pruner != "none" and not train.eval_every:  # checked: max_steps is set
            train.eval_every = max(1, train.max_steps // spec.reports)
        if (spec.pruner != "none" and first.metric not in COSTS and "/" not in first.metric
                and train.early_stopping_patience is None
                and train.schedule != "plateau"):  # the periodic evaluations score what the pruner judges
            train.early_stopping_metric = first.metric
        resume = retried is not None and _has_checkpoint(run_dir)
        if retried is not None and not resume:  # killed before its first checkpoint: it starts again
            config.run.output.overwrite = True
        from tuneforge.strategies import run_config

        with watching(watch):
            result = run_config(config, resume=resume, quiet=quiet)
    except Stopped as stop:
        trial.set_user_attr("steps", last_step[0])
        trial.set_user_attr("reason", str(stop))
        raise optuna.TrialPruned(str(stop)) from None
    except Exception as exc:  # recorded with its reason; the sweep goes on (Optuna marks the trial failed)
        trial.set_user_attr("steps", last_step[0])
        trial.set_user_attr("reason", f"{type(exc).__name__}: {str(exc)[:2000]}")
        raise
    trial.set_user_attr("steps", result.steps)
    scores = [metric_value(result, target.metric) for target in spec.objectives]
    trial.set_user_attr("scores", dict(zip([t.metric for t in spec.objectives], scores, strict=True)))
    return scores if len(scores) > 1 else scores[0]


def _has_checkpoint(run_dir: Path) -> bool:
    from tuneforge.engine.checkpoint import latest_checkpoint
    from tuneforge.runs.layout import CHECKPOINTS

    return latest_checkpoint(run_dir / CHECKPOINTS)[0] is not None


def _sample(trial, spec: SweepConfig, loaded: LoadedConfig) -> dict[str, Any]:
    """The trial's values, unconditional keys first, then each conditional key whose conditions hold (on sampled
    values or the config's own)."""
    base = loaded.run.model_dump(mode="json")
    values: dict[str, Any] = {}
    pending = dict(spec.space)
    while pending:
        ready = [k for k, d in pending.items() if all(o in values or o not in spec.space for o in d.when)]
        if not ready:
            raise ConfigError(f"{loaded.where('sweep', 'space')}: the conditions of {', '.join(pending)} name each "
                              "other\n  fix: make the conditions a chain, not a cycle")
        for key in ready:
            dimension = pending.pop(key)
            if all((values[o] if o in values else _value_at(base, o)) in allowed for o, allowed in
                   dimension.when.items()):
                values[key] = _suggest(trial, key, dimension)
    return values


def _suggest(trial, key: str, d: Dimension) -> Any:
    if d.choices is not None:
        return trial.suggest_categorical(key, d.choices)
    if d.integer:
        return trial.suggest_int(key, int(d.low), int(d.high), step=int(d.step or 1), log=d.log)
    return trial.suggest_float(key, d.low, d.high, step=d.step, log=d.log)


def _cast(d: Dimension, value: float) -> float | int:
    return round(value) if d.integer else float(value)


def _probes(d: Dimension) -> list[Any]:
    if d.choices is not None:
        return list(d.choices)
    return [_cast(d, d.low), _cast(d, d.high)]


_MISSING = object()


def _value_at(raw: dict, key: str) -> Any:
    node: Any = raw
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _schema_keys(section: str, name: str) -> set[str]:
    from tuneforge.methods import REGISTRY as METHODS
    from tuneforge.objectives import get_objective
    from tuneforge.strategies.params import PARAMS

    schema = {"method": lambda: METHODS[name].params, "objective": lambda: get_objective(name).params,
              "strategy": lambda: PARAMS[name]}[section]
    try:
        return set(schema().model_fields)
    except KeyError:
        return set()  # an unknown name: the config check says so, with the closest one


# results ---------------------------------------------------------------------------------------------------------


def _write_results(loaded: LoadedConfig, spec: SweepConfig, out: Path, study) -> SweepResult:
    from tuneforge.reports.sweep import write_report

    trials = [_row(t, spec) for t in study.get_trials(deepcopy=False)]
    best = [_row(t, spec) for t in study.best_trials] if any(t["state"] == "COMPLETE" for t in trials) else []
    best.sort(key=lambda t: next(iter(t["scores"].values())) * (1 if spec.objectives[0].direction == "minimize"
                                                                else -1))
    record = {"objectives": [t.model_dump() for t in spec.objectives], "pruner": spec.pruner,
              "sampler": spec.sampler, "trials": trials,
              "best": [t["number"] for t in best], "importance": _importance(study, spec)}
    write_json(out / TRIALS_FILE, record)
    if best:
        values = best[0]["params"]
        chosen = trial_config(loaded, values, Path(loaded.run.output.dir))
        text = dump_yaml(chosen.run)
        (out / BEST_FILE).write_text(f"# tuneforge sweep {out}: trial {best[0]['number']}, "
                                     f"{json.dumps(best[0]['scores'])}\n{text}")
    write_report(out)
    return SweepResult(out, trials, best)


def _row(trial, spec: SweepConfig) -> dict:
    values = trial.values if trial.values is not None and trial.state.name == "COMPLETE" else []  # a pruned
    scores = dict(zip([t.metric for t in spec.objectives], values, strict=False))  # one's is its last report
    return {"number": trial.number, "state": trial.state.name, "params": trial.params, "scores": scores,
            "steps": trial.user_attrs.get("steps"), "run_dir": trial.user_attrs.get("run_dir"),
            "process": f"{trial.user_attrs.get('host')}:{trial.user_attrs.get('pid')}",
            "reason": trial.user_attrs.get("reason"), "intermediate": {str(k): v for k, v in
                                                                       trial.intermediate_values.items()},
            "seconds": (trial.datetime_complete - trial.datetime_start).total_seconds()
            if trial.datetime_complete and trial.datetime_start else None}


def _importance(study, spec: SweepConfig) -> dict[str, float]:
    """How much each searched key explains the first objective across the complete trials (Optuna's fANOVA)."""
    import optuna
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 3 or len({json.dumps(t.params, sort_keys=True) for t in complete}) < 2:
        return {}
    try:
        return dict(optuna.importance.get_param_importances(study, target=lambda t: t.values[0]))
    except (RuntimeError, ValueError):  # a space Optuna cannot decompose (a single distinct value ...)
        return {}
