"""Where a run's numbers go: metrics.jsonl (always), TensorBoard (by default), and the console —
a rich progress bar on a terminal, plain log lines otherwise or with --quiet."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    """Append-only metrics.jsonl plus optional TensorBoard events. On resume, rows after the resumed step
    are dropped so the file reads as one uninterrupted run."""

    def __init__(self, run_dir: Path, tensorboard: bool, resume_step: int | None = None):
        self.path = run_dir / METRICS_FILE
        if resume_step is not None and self.path.exists():
            kept = [row for row in _rows(self.path) if row.get("step", 0) <= resume_step]
            self.path.write_text("".join(json.dumps(row) + "\n" for row in kept))
        self._file = self.path.open("a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=resume_step)

    def log(self, step: int, kind: str, values: dict[str, Any]) -> None:
        row = {"step": step, "kind": kind, "time": round(time.time(), 3), **values}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, int | float):
                    self._tb.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


class NullMetrics(MetricsLog):
    """Where the metrics of a process that does not write go (the other processes of a distributed run)."""

    def __init__(self) -> None:
        pass

    def log(self, step: int, kind: str, values: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_FILE
    return _rows(path) if path.exists() else []


def _rows(path: Path) -> list[dict[str, Any]]:
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


class RunConsole:
    """Console output for a run: messages, and training progress (bar on a TTY, lines otherwise)."""

    def __init__(self, quiet: bool = False, silent: bool = False):
        self.quiet, self.silent = quiet, silent  # silent: a process that does not report (distributed runs)
        self.console = Console(stderr=False, highlight=False, quiet=silent)
        self.interactive = sys.stdout.isatty() and not quiet and not silent
        self._progress: Progress | None = None
        self._task = None

    def info(self, message: str) -> None:
        self.console.print(message, markup=False, soft_wrap=True)

    def start_training(self, total: int, done: int) -> None:
        if not self.interactive:
            return
        self._progress = Progress(
            TextColumn("step"), MofNCompleteColumn(), BarColumn(), TextColumn("{task.fields[status]}"),
            TimeRemainingColumn(), console=self.console, transient=False)
        self._task = self._progress.add_task("train", total=total, completed=done, status="")
        self._progress.start()

    def step(self, step: int, total: int, values: dict[str, float], eta_s: float) -> None:
        status = f"loss {values['loss']:.4f}  lr {values['lr']:.2e}  {values['tokens_per_s']:.0f} tok/s"
        if "reward_accuracy" in values:
            status += f"  reward acc {values['reward_accuracy']:.2f} margin {values['reward_margin']:.3f}"
        if "reward_mean" in values:  # online RL: the sampled completions' reward, and the drift from the reference
            status += f"  reward {values['reward_mean']:.3f} ± {values['reward_std']:.3f}"
            status += f"  kl {values['kl']:.4f}" if "kl" in values else ""
            status += f"  length {values['completion_length']:.1f}"
        if self._progress is not None:
            self._progress.update(self._task, completed=step, status=status)
        else:
            self.info(f"step {step}/{total}  {status}  eta {_duration(eta_s)}")

    def stop_training(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s"


def flat_scores(scores: dict) -> dict[str, float]:
    """Scores as one level for display: the top-level figures (with tasks, their mean), then each task's own
    as `task/metric`."""
    flat = {k: v for k, v in scores.items() if isinstance(v, int | float)}
    for task, own in (scores.get("tasks") or {}).items():
        flat |= {f"{task}/{k}": v for k, v in own.items() if isinstance(v, int | float)}
    return flat
