"""The method comparison report: one row per run directory, read from what the runs wrote (run.json,
metrics.jsonl, eval.json, compare.json), as report.md, report.html and PNG charts, with the winner of
each column named."""

from __future__ import annotations

import html
import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from tuneforge.runs.layout import read_json, read_metrics


@dataclass(frozen=True)
class Column:
    key: str
    title: str
    better: str  # "min" or "max"
    fmt: str


COLUMNS = (
    Column("trainable", "trainable params", "min", "{:,.0f}"),
    Column("trainable_pct", "trainable %", "min", "{:.3f}"),
    Column("peak_memory_gib", "peak memory GiB", "min", "{:.2f}"),
    Column("tokens_per_s", "train tok/s", "max", "{:.0f}"),
    Column("wall_s", "train wall s", "min", "{:.1f}"),
    Column("task_loss", "task loss", "min", "{:.3f}"),
    Column("exact_match", "task exact match", "max", "{:.1f}"),
    Column("accuracy", "task accuracy", "max", "{:.1f}"),
    Column("f1", "task F1", "max", "{:.1f}"),
    Column("bench_acc", "benchmark accuracy", "max", "{:.1f}"),
    Column("latency_ms", "latency ms/token", "min", "{:.1f}"),
    Column("merged_latency_ms", "merged ms/token", "min", "{:.1f}"),
    Column("text_latency_ms", "latency ms/text", "min", "{:.1f}"),
    Column("merged_text_latency_ms", "merged ms/text", "min", "{:.1f}"),
    Column("forgetting_loss", "forgetting: loss of base replies, change", "min", "{:+.3f}"),
    Column("forgetting_accuracy", "forgetting: general accuracy change", "max", "{:+.1f}"),
)


def run_row(run_dir: Path) -> dict:
    """One method's figures from its run directory (None where a figure does not apply, or the run has not
    recorded it: one still training, or one that failed)."""
    status, evaluation = read_json(run_dir / "run.json"), read_json(run_dir / "eval.json")
    measured = read_json(run_dir / "compare.json")
    steps = [r for r in read_metrics(run_dir) if r.get("kind") == "train"]
    steady = steps[1:] or steps
    after = evaluation.get("after", {})
    trainable, parameters = status.get("trainable_parameters"), status.get("parameters")
    return {
        "method": run_dir.name,
        "trainable": trainable,
        "trainable_pct": 100 * trainable / parameters if trainable is not None and parameters else None,
        "peak_memory_gib": max((r["peak_memory_gib"] for r in steps if "peak_memory_gib" in r), default=None),
        "tokens_per_s": statistics.median(r["tokens"] / r["step_time_s"] for r in steady) if steady else None,
        "wall_s": (status.get("train") or {}).get("wall_s"),
        "task_loss": after.get("loss"),
        "exact_match": after.get("exact_match"),
        "accuracy": after.get("accuracy"),
        "f1": after.get("f1"),
        "bench_acc": after.get("bench_acc"),
        "latency_ms": measured.get("latency_ms_per_token"),
        "merged_latency_ms": measured.get("merged_latency_ms_per_token"),
        "text_latency_ms": measured.get("latency_ms_per_text"),
        "merged_text_latency_ms": measured.get("merged_latency_ms_per_text"),
        "forgetting_loss": (measured.get("forgetting") or {}).get("loss_change"),
        "forgetting_accuracy": (measured.get("forgetting") or {}).get("accuracy_change"),
        "before": evaluation.get("before", {}),
        "general_before": measured.get("general_before"),
    }


def winners(rows: list[dict]) -> dict[str, str]:
    """The method with the best value of each column (ties: the first listed)."""
    best = {}
    for column in COLUMNS:
        present = [r for r in rows if r.get(column.key) is not None]
        if present and len({round(r[column.key], 9) for r in present}) > 1:  # a column where all tie has no winner
            pick = (min if column.better == "min" else max)(present, key=lambda r, k=column.key: r[k])
            best[column.key] = pick["method"]
    return best


def shown_columns(rows: list[dict]) -> tuple[Column, ...]:
    """The columns some run has a figure for (a classification task has no exact match or forgetting, a language
    model no accuracy)."""
    return tuple(c for c in COLUMNS if any(r.get(c.key) is not None for r in rows))


def write_report(out_dir: Path, run_dirs: list[Path], title: str) -> dict[str, Path]:
    rows = [run_row(d) for d in run_dirs]
    best = winners(rows)
    columns = shown_columns(rows)
    charts = _charts(out_dir, rows, columns)
    paths = {"md": out_dir / "report.md", "html": out_dir / "report.html"}
    paths["md"].write_text(_markdown(rows, best, title, charts, columns))
    paths["html"].write_text(_html(rows, best, title, charts, columns))
    (out_dir / "report.json").write_text(json.dumps({"rows": rows, "winners": best}, indent=2))
    return {**paths, **{f"chart:{p.stem}": p for p in charts}}


def _cell(row: dict, column: Column) -> str:
    value = row.get(column.key)
    return "—" if value is None else column.fmt.format(value)


def _markdown(rows: list[dict], best: dict[str, str], title: str, charts: list[Path],
              columns: tuple[Column, ...]) -> str:
    header = "| method | " + " | ".join(c.title for c in columns) + " |"
    lines = [f"# {title}", "", header, "|" + " --- |" * (len(columns) + 1)]
    for row in rows:
        cells = [f"**{_cell(row, c)}**" if best.get(c.key) == row["method"] else _cell(row, c) for c in columns]
        lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
    lines += ["", "Best per column (bold above): " + "; ".join(f"{c.title}: **{best[c.key]}**"
                                                              for c in columns if c.key in best), ""]
    lines += [_legend(rows), ""] + [f"![{p.stem}]({p.name})" for p in charts]
    return "\n".join(lines) + "\n"


def _legend(rows: list[dict]) -> str:
    base = rows[0]
    before = ", ".join(f"{k} {v:.3g}" for k, v in base["before"].items()
                       if isinstance(v, int | float)) or "not measured"
    general = base["general_before"]
    if general is None:  # a classification task
        return (f"Base model before training (its new head untrained): task {before}. Latency is the median "
                "milliseconds to label one test text; merged = the adapter folded into the base (— where a method "
                "cannot merge).")
    return (f"Base model before training: task {before}; on the general set, answer accuracy "
            f"{general['accuracy']:.1f}% and loss of its own replies {general['loss']:.3f}. Latency is greedy "
            "decoding one prompt at a time (median ms per generated token); merged = the adapter folded into the "
            "base (— where a method cannot merge). Forgetting is measured on the bundled general set (capitals, "
            "sums, opposites; nothing like the task): the change of answer accuracy (the reference answer appears "
            "in the reply), and the change of the loss of the base model's own replies (a rise means the tuned "
            "model no longer answers the way the base did). Both compare the tuned model with the base model.")


def _html(rows: list[dict], best: dict[str, str], title: str, charts: list[Path],
          columns: tuple[Column, ...]) -> str:
    head = "".join(f"<th>{html.escape(c.title)}</th>" for c in columns)
    body = []
    for row in rows:
        cells = "".join(f"<td class='{'best' if best.get(c.key) == row['method'] else ''}'>{_cell(row, c)}</td>"
                        for c in columns)
        body.append(f"<tr><th>{html.escape(row['method'])}</th>{cells}</tr>")
    images = "".join(f"<img src='{p.name}' alt='{p.stem}'>" for p in charts)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
            "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
            "padding:4px 8px;text-align:right}td.best{background:#d4f4d4;font-weight:bold}img{max-width:48%}"
            f"</style></head><body><h1>{html.escape(title)}</h1><table><tr><th>method</th>{head}</tr>"
            f"{''.join(body)}</table><p>{html.escape(_legend(rows))}</p>{images}</body></html>\n")


def _charts(out_dir: Path, rows: list[dict], shown: tuple[Column, ...]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for group, keys in (("cost", ("trainable_pct", "peak_memory_gib", "tokens_per_s", "wall_s")),
                        ("quality", ("exact_match", "accuracy", "f1", "bench_acc", "task_loss", "forgetting_loss",
                                     "forgetting_accuracy")),
                        ("inference", ("latency_ms", "merged_latency_ms", "text_latency_ms",
                                       "merged_text_latency_ms"))):
        columns = [c for c in shown if c.key in keys]
        figure, axes = plt.subplots(1, len(columns), figsize=(4.2 * len(columns), 3.6), dpi=100, squeeze=False)
        for axis, column in zip(axes[0], columns, strict=True):
            names = [r["method"] for r in rows]
            values = [r[column.key] if r.get(column.key) is not None else 0.0 for r in rows]
            axis.bar(names, values, color=["#2a9d55" if n == winners(rows).get(column.key) else "#6c8ebf"
                                           for n in names])
            axis.set_title(f"{column.title} ({'lower' if column.better == 'min' else 'higher'} is better)", fontsize=9)
            axis.tick_params(axis="x", rotation=60, labelsize=8)
            axis.grid(axis="y", alpha=0.3)
        figure.tight_layout()
        path = out_dir / f"{group}.png"
        figure.savefig(path)
        plt.close(figure)
        paths.append(path)
    return paths
