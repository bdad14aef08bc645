"""The continual-learning figures and report. The accuracy matrix R has one row per moment (before any
training, then after each task) and one column per task: R[i][j] is the score on task j after training task
i (row 0: before). From it, as in GEM (Lopez-Paz & Ranzato, 2017, https://arxiv.org/abs/1706.08840) and
Chaudhry et al. (2018, https://arxiv.org/abs/1801.10112):

- average accuracy: the mean of the last row;
- backward transfer (BWT): the mean over all but the last task of R[T][j] - R[j][j] (negative = forgetting);
- forward transfer (FWT): the mean over all but the first task of R[j-1][j] - R[0][j] (what earlier tasks
  gave a task before it trained);
- forgetting of task j: its best score after it trained, before the last task, minus its last score.

`write_report` puts several runs (the mitigations, the multi-task joint run as the upper bound) side by side
as report.md, report.html and one heatmap PNG per run."""

from __future__ import annotations

import html
import json
from pathlib import Path


def summary(matrix: list[list[float]]) -> dict:
    """Average accuracy, BWT, FWT and per-task forgetting of an accuracy matrix (rows: before, then after
    each task; T ≥ 1 tasks)."""
    tasks = len(matrix[0])
    last = matrix[tasks]
    earlier = range(tasks - 1)
    forgetting = [max(matrix[i][j] for i in range(j + 1, tasks)) - last[j] for j in earlier]
    return {
        "average": sum(last) / tasks,
        "bwt": sum(last[j] - matrix[j + 1][j] for j in earlier) / max(tasks - 1, 1),
        "fwt": sum(matrix[j][j] - matrix[0][j] for j in range(1, tasks)) / max(tasks - 1, 1),
        "forgetting": forgetting,
        "mean_forgetting": sum(forgetting) / max(tasks - 1, 1),
    }


def gap_closed(run: float, naive: float, joint: float) -> float | None:
    """How much of the average-accuracy gap between naive sequential and joint training a run closes (1 = all)."""
    return None if joint == naive else (run - naive) / (joint - naive)


def read_run(run_dir: Path) -> dict:
    """What a run wrote: its eval.json (a sequential run's matrix and summary, or a joint run's per-task
    scores) and run.json (time, memory)."""
    from tuneforge.runs.layout import read_metrics

    evaluation = json.loads((run_dir / "eval.json").read_text())
    status = json.loads((run_dir / "run.json").read_text())
    if "peak_memory_gib" not in status["train"]:  # a single run: its steps' peak
        status["train"]["peak_memory_gib"] = max((r["peak_memory_gib"] for r in read_metrics(run_dir)
                                                  if r["kind"] == "train"), default=None)
    return {"eval": evaluation, "run": status}


def heatmap(path: Path, matrix: list[list[float]], tasks: list[str], title: str, metric: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = ["before", *(f"after {t}" for t in tasks)]
    fig, ax = plt.subplots(figsize=(1.2 * len(tasks) + 2.5, 0.55 * len(rows) + 1.5))
    image = ax.imshow(matrix, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_yticks(range(len(rows)), rows)
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            ax.text(j, i, f"{value:.0f}", ha="center", va="center", color="white" if value < 60 else "black")
    ax.set_xlabel(f"task scored ({metric})")
    ax.set_title(title)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run_heatmap(run_dir: Path) -> Path:
    """The heatmap of a finished sequential run, in its directory."""
    cont = json.loads((run_dir / "eval.json").read_text())["continual"]
    return heatmap(run_dir / "accuracy_matrix.png", cont["matrix"], cont["tasks"], run_dir.name, cont["metric"])


def write_report(out_dir: Path, runs: dict[str, Path], joint: Path | None = None, naive: str = "none",
                 title: str = "Continual learning", seconds: dict[str, float] | None = None) -> dict[str, Path]:
    """report.md, report.html and heatmaps for sequential runs (name -> run directory) and the joint run;
    `seconds` (name -> wall seconds of the whole run: loading, training, the mitigation's own work such as
    EWC's Fisher, every evaluation) adds a column where known."""
    seconds = seconds or {}
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, run_dir in runs.items():
        data = read_run(run_dir)
        cont = data["eval"]["continual"]
        png = heatmap(out_dir / f"matrix-{name}.png", cont["matrix"], cont["tasks"], name, cont["metric"])
        rows.append({"name": name, **cont["summary"], "last": cont["matrix"][-1], "tasks": cont["tasks"],
                     "metric": cont["metric"], "wall_s": data["run"]["train"]["wall_s"], "run_s": seconds.get(name),
                     "peak_memory_gib": data["run"]["train"].get("peak_memory_gib"), "png": png.name})
    if not rows:
        raise ValueError("no sequential runs to report")
    tasks, metric = rows[0]["tasks"], rows[0]["metric"]
    if joint is not None:
        data = read_run(joint)
        per_task = data["eval"]["after"]["tasks"]
        last = [per_task[t][metric] for t in tasks]
        rows.append({"name": "joint (multi-task)", "average": sum(last) / len(last), "bwt": None, "fwt": None,
                     "mean_forgetting": None, "last": last, "tasks": tasks, "metric": metric,
                     "wall_s": data["run"]["train"]["wall_s"], "run_s": seconds.get("joint"),
                     "peak_memory_gib": data["run"]["train"].get("peak_memory_gib"), "png": None})
    by_name = {r["name"]: r for r in rows}
    if naive in by_name and joint is not None:
        for row in rows:
            row["gap_closed"] = gap_closed(row["average"], by_name[naive]["average"], rows[-1]["average"])
    (out_dir / "report.json").write_text(json.dumps(rows, indent=1))
    md = out_dir / "report.md"
    md.write_text(_markdown(rows, tasks, metric, title))
    page = out_dir / "report.html"
    page.write_text(_html(rows, tasks, metric, title))
    return {"markdown": md, "html": page}


def _fmt(value, spec: str) -> str:
    return "–" if value is None else spec.format(value)


def _table(rows: list[dict], tasks: list[str]) -> tuple[list[str], list[list[str]]]:
    head = ["run", "average", "BWT", "FWT", "forgetting", "gap closed", *tasks, "train s", "run s", "peak GiB"]
    body = [[r["name"], _fmt(r["average"], "{:.1f}"), _fmt(r["bwt"], "{:+.1f}"), _fmt(r["fwt"], "{:+.1f}"),
             _fmt(r["mean_forgetting"], "{:.1f}"), _fmt(r.get("gap_closed"), "{:.0%}"),
             *(f"{v:.0f}" for v in r["last"]), _fmt(r["wall_s"], "{:.0f}"), _fmt(r.get("run_s"), "{:.0f}"),
             _fmt(r["peak_memory_gib"], "{:.2f}")]
            for r in rows]
    return head, body


def _markdown(rows: list[dict], tasks: list[str], metric: str, title: str) -> str:
    head, body = _table(rows, tasks)
    lines = [f"# {title}", "", f"Scores are {metric} on each task's test set after the last task; BWT, FWT and "
             "forgetting in points (see tuneforge/reports/continual.py); gap closed: the share of the average-"
             "accuracy gap between naive sequential training and the joint multi-task run that a run closes; "
             "train s: the training loops' time; run s: the whole run (loading, training, the mitigation's own "
             "work such as EWC's Fisher, the evaluation after every task); peak GiB: the run's peak memory.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    lines += [""] + [f"![{r['name']}]({r['png']})" for r in rows if r["png"]]
    return "\n".join(lines) + "\n"


def _html(rows: list[dict], tasks: list[str], metric: str, title: str) -> str:
    head, body = _table(rows, tasks)
    cells = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body)
    images = "".join(f'<figure><img src="{html.escape(r["png"])}" alt="{html.escape(r["name"])}"></figure>'
                     for r in rows if r["png"])
    return (f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif}td,th{padding:4px 8px;border-bottom:1px solid #ddd}"
            "figure{display:inline-block}</style>"
            f"<h1>{html.escape(title)}</h1><p>{html.escape(metric)} per task after the last task.</p>"
            "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + f"</tr>{cells}</table>{images}")
