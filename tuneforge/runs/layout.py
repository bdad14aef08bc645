"""What a run directory holds and how its records are read and written. The names are the directory's
contract with everything that reads it (reports, the web UI, `eval`/`chat`/`export`, other tools):

    config.yaml      the run's whole config, as validated          tokenizer/   the tokenizer it trained with
    run.json         status (training | complete | failed | interrupted), identity, what it measured
    eval.json        scores before and after training, samples     metrics.jsonl   a row per step/evaluation
    adapter/ (or model/, ...)  what the method saved               labels.json  a classifier's classes
    checkpoints/     step-NNNNNNNN/ of the training in progress    tasks/, rounds/, adapters/  sub-runs

Nothing here imports PyTorch or the engine."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

CONFIG_FILE = "config.yaml"
RUN_FILE = "run.json"
EVAL_FILE = "eval.json"
METRICS_FILE = "metrics.jsonl"
RESULT_FILE = "result.json"  # a finished phase of a strategy (a continual task)
MEASURE_FILE = "compare.json"  # `tuneforge compare`'s measures: latency unmerged and merged, forgetting
SPEED_FILE = "speed.json"  # the distillation report's measures: layers, parameters, size, generation speed
TOKENIZER_DIR = "tokenizer"
CHECKPOINTS = "checkpoints"
TASKS = "tasks"  # a sequential strategy's phases
ROUNDS = "rounds"  # a federation's aggregated rounds
ADAPTERS = "adapters"  # a per-task multitask run's own runs

SUB_RUNS = (CHECKPOINTS, TASKS, ROUNDS, ADAPTERS)  # folders whose weights are not the run's own

TRAINING, COMPLETE, FAILED, INTERRUPTED = "training", "complete", "failed", "interrupted"
STOPPED = "stopped"  # ended on purpose before its end (a sweep's pruner), with the reason


def read_json(path: Path) -> dict:
    """A JSON record of the run, or {} where it is missing or unreadable (a run killed before writing it)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_json(path: Path, data: dict) -> None:
    """Written whole or not at all: a temporary file renamed over the old one."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def status_of(run_dir: Path) -> str | None:
    """run.json's status: training, complete, failed or interrupted (None: not a run, or not started)."""
    return read_json(Path(run_dir) / RUN_FILE).get("status")


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_FILE
    return metric_rows(path) if path.exists() else []


def metric_rows(path: Path) -> list[dict[str, Any]]:
    """The file's rows, less a last line cut short (a full disk or a kill while it was written)."""
    lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except ValueError:
            if number < len(lines):
                raise ValueError(f"{path}:{number}: not a JSON row") from None
    return rows
