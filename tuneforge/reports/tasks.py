"""The per-task table of a run whose test sets name their tasks: each task's scores before and after
training, the change, and the mean of the tasks, from eval.json, as tasks.md in the run directory."""

from __future__ import annotations

import json
from pathlib import Path


def write_task_report(run_dir: str | Path) -> Path | None:
    """tasks.md in `run_dir`; None when the run's evaluation has no tasks."""
    run_dir = Path(run_dir)
    try:
        evaluation = json.loads((run_dir / "eval.json").read_text())
    except (OSError, ValueError):
        return None
    after, before = evaluation.get("after") or {}, evaluation.get("before") or {}
    tasks = after.get("tasks")
    if not tasks:
        return None
    lines = [f"# Per-task scores: {run_dir.name}", "", "| task | metric | before | after | change |",
             "|---|---|---|---|---|"]
    rows = [*((task, scores, (before.get("tasks") or {}).get(task, {})) for task, scores in tasks.items()),
            ("mean of the tasks", {k: v for k, v in after.items() if k != "tasks"},
             {k: v for k, v in before.items() if k != "tasks"})]
    for task, now, then in rows:
        for metric, value in now.items():
            old = then.get(metric)
            change = "–" if old is None else f"{value - old:+.3f}"
            lines.append(f"| {task} | {metric} | {'–' if old is None else f'{old:.3f}'} | {value:.3f} | {change} |")
    path = run_dir / "tasks.md"
    path.write_text("\n".join(lines) + "\n")
    return path
