"""What a phase reports as it trains: the console (a rich progress bar on a terminal, plain log lines otherwise or
with --quiet), scores as one level for display, and `Metrics`, where the loop's rows go (a run directory's
metrics log, `runs.metrics.MetricsLog`, or nowhere)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class Metrics:
    """Where the rows of a phase go: nowhere, here (the other processes of a distributed run, a federated
    client's local steps); a run directory's metrics log overrides both methods."""

    def log(self, step: int, kind: str, values: dict[str, Any]) -> None:
        pass

    def close(self, artifacts: Sequence[Path] = (), failed: bool = False) -> None:
        pass


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
    as `task/metric` (lm-eval's tasks' too), and a group of figures as `group/name` (`bench_subjects/dates`)."""
    flat = {k: v for k, v in scores.items() if isinstance(v, int | float)}
    for group, members in scores.items():
        for name, own in members.items() if isinstance(members, dict) else ():
            if isinstance(own, dict) and group in ("tasks", "lm_eval"):
                flat |= {f"{name}/{k}": v for k, v in own.items() if isinstance(v, int | float)}
            elif isinstance(own, int | float):
                flat[f"{group}/{name}"] = own
    return flat


def format_scores(scores: dict) -> str:
    return "  ".join(f"{k} {v:.4g}" for k, v in flat_scores(scores).items())
