"""A folder of runs as the web UI (and any other reader) lists it: every run directory under it with its status and
headline figures, the sweeps among them, a run's rows from a byte offset on, and names checked to stay inside the
folder. Read from the records alone (`layout`): nothing here imports PyTorch or the engine, and nothing writes.

A run's status is run.json's, except that one recorded as `training` whose lock no process holds was stopped
without a chance to say so (kill -9, a lost machine): `interrupted`, as `tuneforge train --resume` treats it."""

from __future__ import annotations

import json
import os
import re
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tuneforge.engine.console import flat_scores
from tuneforge.runs.layout import (
    ADAPTERS,
    CONFIG_FILE,
    EVAL_FILE,
    INTERRUPTED,
    METRICS_FILE,
    ROUNDS,
    RUN_FILE,
    TASKS,
    TRAINING,
    read_json,
)
from tuneforge.runs.lock import is_locked

SWEEP_MARKERS = ("trials.json", "study.db")  # a `tuneforge sweep` folder (trials.json once it has ended)
MAX_DEPTH = 4  # runs/<group>/<sweep>/trials/<trial>
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml where installed: 200 configs read in ~0.1 s
_NAME = re.compile(r"[\w-][\w.-]{0,127}")  # one part of a run's id: no '..', nothing hidden, no separators


class Outside(ValueError):
    """A name that does not lead to a run (or file) inside the folder."""


@dataclass
class RunSummary:
    id: str  # the path under the folder, '/'-separated
    status: str
    strategy: str = ""
    method: str = ""
    objective: str = ""
    model: str = ""
    started: float | None = None  # unix time of the first metrics row (or of the config, before any row)
    duration_s: float | None = None  # first to last row
    steps: int | None = None
    metric: str | None = None  # the headline metric: the first of eval.metrics that was scored
    before: float | None = None
    after: float | None = None
    sweep: str | None = None  # the sweep folder a trial belongs to

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class SweepSummary:
    id: str
    trials: list[dict] = field(default_factory=list)  # trials.json's, or the trial runs' while it is running
    objectives: list[dict] = field(default_factory=list)
    best: list[int] = field(default_factory=list)
    importance: dict[str, float] = field(default_factory=dict)
    finished: bool = False


def status(run_dir: Path, record: dict | None = None) -> str | None:
    """A run's status as run.json (or its `record`, read already) says it, except that a run recorded as training
    whose lock no process holds was stopped without a chance to say so (kill -9, a lost machine): `interrupted`."""
    said = (read_json(Path(run_dir) / RUN_FILE) if record is None else record).get("status")
    return INTERRUPTED if said == TRAINING and not is_locked(Path(run_dir)) else said


def resolve(root: Path, ident: str, *, kind: str = "run") -> Path:
    """The directory an id names under `root`, refused (`Outside`) unless every part is a plain name and the
    resolved path (links followed) stays inside `root`; a run must hold run.json, a sweep its marker."""
    parts = ident.split("/") if isinstance(ident, str) else []
    if not parts or len(parts) > MAX_DEPTH or not all(_NAME.fullmatch(p) for p in parts):
        raise Outside(f"no {kind} '{str(ident)[:100]}' in this folder")
    path = (root / Path(*parts)).resolve()
    markers = (RUN_FILE,) if kind == "run" else SWEEP_MARKERS
    if not path.is_relative_to(root.resolve()) or not any((path / m).is_file() for m in markers):
        raise Outside(f"no {kind} '{ident[:100]}' in this folder")
    return path


def file_in(run_dir: Path, name: str, suffixes: tuple[str, ...]) -> Path:
    """A file of the run named by `name` (a plain name with one of `suffixes`), never a path out of it."""
    if not _NAME.fullmatch(name) or Path(name).suffix not in suffixes:
        raise Outside(f"no file '{name[:100]}' of this run")
    path = (run_dir / name).resolve()
    if not path.is_relative_to(run_dir.resolve()) or not path.is_file():
        raise Outside(f"no file '{name[:100]}' of this run")
    return path


def find(root: Path) -> tuple[list[Path], list[Path]]:
    """The run directories and sweep folders under `root` (hidden folders skipped; a run's own folders are its
    sub-runs, not runs of the list), sorted by path."""
    runs: list[Path] = []
    sweeps: list[Path] = []

    def walk(folder: Path, depth: int) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            return
        names = {e.name for e in entries}
        if RUN_FILE in names:
            runs.append(folder)
            return
        if names & set(SWEEP_MARKERS):
            sweeps.append(folder)
        if depth < MAX_DEPTH:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False) and not entry.name.startswith("."):
                    walk(Path(entry.path), depth + 1)

    walk(root, 0)
    return runs, sweeps


def list_runs(root: Path) -> list[RunSummary]:
    runs, sweeps = find(root)
    sweep_of = {s: s.relative_to(root).as_posix() for s in sweeps}
    summaries = []
    for run_dir in runs:
        owner = next((ident for folder, ident in sweep_of.items() if run_dir.is_relative_to(folder)), None)
        summaries.append(summarize(root, run_dir, owner))
    return summaries


def summarize(root: Path, run_dir: Path, sweep: str | None = None) -> RunSummary:
    record = read_json(run_dir / RUN_FILE)
    summary = RunSummary(run_dir.relative_to(root).as_posix(), status(run_dir, record) or "unknown", sweep=sweep)
    config = read_config(run_dir)
    summary.strategy, summary.method, summary.objective = (_name(config.get(k), d) for k, d in
                                                           (("strategy", "single"), ("method", "lora"),
                                                            ("objective", "sft")))
    model = config.get("model")
    summary.model = str(model.get("path", "") if isinstance(model, dict) else model or "")
    first, last = edge_rows(run_dir / METRICS_FILE)
    if first:
        summary.started = first.get("time")
        summary.duration_s = round(last["time"] - first["time"], 1) if "time" in last and "time" in first else None
        summary.steps = last.get("step")
    else:
        with suppress(OSError):
            summary.started = (run_dir / CONFIG_FILE).stat().st_mtime
    steps = (record.get("train") or {}).get("steps")
    summary.steps = steps if isinstance(steps, int) else summary.steps
    scores = read_json(run_dir / EVAL_FILE)
    before, after = flat_scores(scores.get("before") or {}), flat_scores(scores.get("after") or {})
    wanted = ((config.get("eval") or {}).get("metrics") or []) + list(after) + list(before)
    summary.metric = next((m for m in wanted if m in after or m in before), None)
    if summary.metric:
        summary.before, summary.after = before.get(summary.metric), after.get(summary.metric)
    return summary


def read_config(run_dir: Path) -> dict:
    try:
        config = yaml.load((run_dir / CONFIG_FILE).read_text(encoding="utf-8"), Loader=_LOADER)
    except (OSError, ValueError, yaml.YAMLError):
        return {}
    return config if isinstance(config, dict) else {}


def edge_rows(path: Path) -> tuple[dict, dict]:
    """The first and last complete rows of a metrics file, read from its two ends ({} where there are none)."""
    try:
        with path.open("rb") as handle:
            first = _row(handle.readline())
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - 8192))
            tail = handle.read().split(b"\n")
    except OSError:
        return {}, {}
    last = next((row for row in map(_row, reversed(tail)) if row), first)
    return first, last


def rows_from(run_dir: Path, offsets: dict[str, int]) -> tuple[list[dict], dict[str, int]]:
    """The metrics rows written since `offsets` (bytes read so far, per metrics file of the run and its sub-runs:
    a continual task's, a federated round's), each with `phase` naming its folder ('' for the run's own); a row
    still being written waits for the next call."""
    rows: list[dict] = []
    offsets = dict(offsets)
    for path in metrics_files(run_dir):
        phase = path.parent.relative_to(run_dir).as_posix() if path.parent != run_dir else ""
        start = offsets.get(phase, 0)
        try:
            with path.open("rb") as handle:
                handle.seek(start)
                chunk = handle.read()
        except OSError:
            continue
        complete = chunk[:chunk.rfind(b"\n") + 1]
        for line in complete.splitlines():
            row = _row(line)
            if row:
                rows.append({"phase": phase, **row})
        offsets[phase] = start + len(complete)
    return rows, offsets


def metrics_files(run_dir: Path) -> list[Path]:
    own = [run_dir / METRICS_FILE] if (run_dir / METRICS_FILE).is_file() else []
    return own + sorted(p for folder in (TASKS, ROUNDS, ADAPTERS) for p in (run_dir / folder).glob(f"*/{METRICS_FILE}"))


def read_sweep(root: Path, folder: Path) -> SweepSummary:
    record = read_json(folder / "trials.json")
    summary = SweepSummary(folder.relative_to(root).as_posix(), finished=bool(record))
    if record:
        summary.trials, summary.best = record.get("trials", []), record.get("best", [])
        summary.objectives, summary.importance = record.get("objectives", []), record.get("importance", {})
        for trial in summary.trials:  # the trial's run as an id of the folder, where it is one
            run = (folder / "trials" / Path(str(trial.get("run_dir") or "")).name)
            trial["run"] = run.relative_to(root).as_posix() if (run / RUN_FILE).is_file() else None
        return summary
    runs, _ = find(folder / "trials") if (folder / "trials").is_dir() else ([], [])
    for number, run_dir in enumerate(runs):  # a running sweep: its trials as they are now
        run = summarize(root, run_dir, summary.id)
        summary.trials.append({"number": number, "state": run.status.upper(), "run": run.id,
                               "scores": {run.metric: run.after} if run.after is not None else {}, "params": {}})
    return summary


def _name(value: Any, default: str) -> str:
    if isinstance(value, dict):
        return str(value.get("name", default))
    return str(value) if value else default


def _row(line: bytes) -> dict:
    try:
        row = json.loads(line)
    except ValueError:
        return {}
    return row if isinstance(row, dict) else {}
