"""The few-shot report of a `strategy: fewshot` run, from its eval.json alone: per target task and averaged over them,
each start's exact match against k (the mean over the seeds with its 95% interval, and the worst seed), and what an
answer costs in prompt tokens (in-context learning pays for its k examples at every answer). Written beside the
run's other files as fewshot.md, fewshot.html and fewshot.png."""

from __future__ import annotations

import html
import json
from pathlib import Path

from tuneforge.reports.pages import write_pages


def read_table(run_dir: Path) -> list[dict]:
    return json.loads((Path(run_dir) / "eval.json").read_text())["fewshot"]


def write_report(run_dir: Path) -> dict[str, Path]:
    return write_pages(Path(run_dir), "fewshot", read_table(run_dir), markdown, _html, _chart)


def _layout(table: list[dict]) -> tuple[list[str], list[str], list[int], dict]:
    tasks = [*sorted({r["task"] for r in table} - {"mean"}), "mean"]
    starts = list(dict.fromkeys(r["start"] for r in table))
    ks = sorted({r["k"] for r in table})
    cells = {(r["start"], r["task"], r["k"]): r for r in table}
    return tasks, starts, ks, cells


def _cell(row: dict | None) -> str:
    if row is None:
        return "—"
    low, high = row["ci95"]
    spread = f" [{low:.1f}, {high:.1f}], worst {row['worst']:.1f}" if row["seeds"] > 1 else ""
    return f"{row['mean']:.1f}{spread}"


def markdown(table: list[dict], chart: str | None = None) -> str:
    tasks, starts, ks, cells = _layout(table)
    lines = ["# Few-shot curves", "", "Exact match (%, teacher-forced) on each target task's test set: the mean over "
             "the seeds [95% interval of the mean], and the worst seed. k = 0 is zero-shot. — : not measured (an "
             "in-context prompt past data.max_seq_len).", ""]
    for task in tasks:
        lines += [f"## {'Averaged over the targets' if task == 'mean' else task}", "",
                  "| start | " + " | ".join(f"k={k}" for k in ks) + " |", "|" + " --- |" * (len(ks) + 1)]
        lines += [f"| {start} | " + " | ".join(_cell(cells.get((start, task, k))) for k in ks) + " |"
                  for start in starts]
        lines.append("")
    lines += ["## Prompt tokens per answer (averaged over the targets)", "",
              "| start | " + " | ".join(f"k={k}" for k in ks) + " |", "|" + " --- |" * (len(ks) + 1)]
    for start in starts:
        row = [cells.get((start, "mean", k)) for k in ks]
        lines.append(f"| {start} | " + " | ".join("—" if r is None else f"{r['prompt_tokens']:.0f}" for r in row)
                     + " |")
    if chart:
        lines += ["", f"![few-shot curves]({chart})"]
    return "\n".join(lines) + "\n"


def _html(table: list[dict], chart: str) -> str:
    tasks, starts, ks, cells = _layout(table)
    sections = []
    for task in tasks:
        head = "".join(f"<th>k={k}</th>" for k in ks)
        body = "".join(f"<tr><th>{html.escape(s)}</th>" + "".join(f"<td>{html.escape(_cell(cells.get((s, task, k))))}"
                                                                   "</td>" for k in ks) + "</tr>" for s in starts)
        title = "Averaged over the targets" if task == "mean" else task
        sections.append(f"<h2>{html.escape(title)}</h2><table><tr><th>start</th>{head}</tr>{body}</table>")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>Few-shot curves</title><style>body{font-family:"
            "sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;"
            "text-align:right}img{max-width:100%}</style></head><body><h1>Few-shot curves</h1><p>Exact match (%, "
            "teacher-forced): mean over the seeds [95% interval], worst seed.</p>"
            f"{''.join(sections)}<img src='{html.escape(chart)}' alt='few-shot curves'></body></html>\n")


def _chart(path: Path, table: list[dict]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks, starts, ks, cells = _layout(table)
    figure, axes = plt.subplots(1, len(tasks), figsize=(3.4 * len(tasks), 3.2), dpi=100, squeeze=False)
    positions = {k: i for i, k in enumerate(ks)}  # k on an even axis: 0, 4, 16, 64 equally spaced
    for axis, task in zip(axes[0], tasks, strict=True):
        for start in starts:
            rows = [cells[start, task, k] for k in ks if (start, task, k) in cells]
            if not rows:
                continue
            x = [positions[r["k"]] for r in rows]
            line, = axis.plot(x, [r["mean"] for r in rows], marker="o", label=start)
            axis.fill_between(x, [r["ci95"][0] for r in rows], [r["ci95"][1] for r in rows], alpha=0.15,
                              color=line.get_color())
            axis.plot(x, [r["worst"] for r in rows], linestyle=":", color=line.get_color())
        axis.set_xticks(range(len(ks)), [str(k) for k in ks])
        axis.set_title("mean of the targets" if task == "mean" else task, fontsize=9)
        axis.set_xlabel("k")
        axis.set_ylim(-2, 102)
    axes[0][0].set_ylabel("exact match % (dotted: worst seed)")
    axes[0][-1].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path
