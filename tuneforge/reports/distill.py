"""The distillation report: the teacher and each student run side by side — layers, parameters, size on disk,
generation speed (tokens/s over the test prompts in batches, and latency per token one prompt at a time) and the
task metrics — as report.md, report.html and a chart (`tuneforge student report`)."""

from __future__ import annotations

import html
import json
from pathlib import Path

from tuneforge.config import load_config
from tuneforge.errors import RunDirError
from tuneforge.runs.layout import CONFIG_FILE, EVAL_FILE, RUN_FILE, SPEED_FILE, read_json

COLUMNS = (("layers", "layers", "{:d}"), ("parameters_m", "parameters (M)", "{:.1f}"),
           ("disk_mib", "bf16 weights MiB", "{:.0f}"), ("tokens_per_s", "generation tok/s", "{:.0f}"),
           ("latency_ms", "latency ms/token", "{:.1f}"), ("exact_match", "exact match", "{:.1f}"),
           ("loss", "test loss", "{:.3f}"), ("train_wall_s", "train wall s", "{:.0f}"))


def read_row(run_dir: Path) -> dict:
    """One run's row: what `runs.measure.measure_speed` measured of its model (speed.json) and what its run
    recorded (scores, training time, objective)."""
    speed = read_json(run_dir / SPEED_FILE)
    if not speed:
        raise RunDirError(f"{run_dir} has no {SPEED_FILE}: its model was not measured\n  fix: run `tuneforge student "
                          "report`, which measures each run first")
    after = read_json(run_dir / EVAL_FILE).get("after", {})
    return {"run": run_dir.name, **speed, "exact_match": after.get("exact_match"),
            "loss": after.get("nll", after.get("loss")),
            "train_wall_s": read_json(run_dir / RUN_FILE).get("train", {}).get("wall_s"),
            "objective": load_config(run_dir / CONFIG_FILE).run.objective.name}


def write_report(out_dir: Path, teacher: Path, students: list[Path], notes: list[str] = ()) -> dict[str, Path]:
    """report.md, report.html, speed_quality.png and report.json for the teacher and the student runs, each
    measured before (`runs.measure.measure_speed`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [{**read_row(teacher), "role": "teacher"}] + [{**read_row(s), "role": "student"} for s in students]
    teacher_row = rows[0]
    for row in rows:
        row["speedup"] = row["tokens_per_s"] / teacher_row["tokens_per_s"]
    chart = _chart(out_dir / "speed_quality.png", rows)
    paths = {"md": out_dir / "report.md", "html": out_dir / "report.html", "chart": chart}
    paths["md"].write_text(_markdown(rows, notes, chart))
    paths["html"].write_text(_html(rows, notes, chart))
    (out_dir / "report.json").write_text(json.dumps({"rows": rows, "notes": list(notes)}, indent=2))
    return paths


def _cells(row: dict) -> list[str]:
    cells = ["—" if row.get(key) is None else fmt.format(row[key]) for key, _, fmt in COLUMNS]
    return [*cells, f"{row['speedup']:.2f}x"]


def _titles() -> list[str]:
    return [title for _, title, _ in COLUMNS] + ["speed vs teacher"]


def _markdown(rows: list[dict], notes: list[str], chart: Path) -> str:
    lines = ["# Distillation: teacher and students", "", "| run | role | objective | " + " | ".join(_titles()) + " |",
             "|" + " --- |" * (len(_titles()) + 3)]
    lines += [f"| {r['run']} | {r['role']} | {r['objective']} | " + " | ".join(_cells(r)) + " |" for r in rows]
    lines += ["", _legend(), *([""] + [f"- {n}" for n in notes] if notes else []), "", f"![{chart.stem}]({chart.name})"]
    return "\n".join(lines) + "\n"


def _legend() -> str:
    return ("Generation tok/s: greedy decoding of the run's test prompts in batches of 50, 16 new tokens each, the "
            "median of three passes; latency: one prompt at a time, ms per generated token after the first (16 "
            "tokens' time less one token's, over 15), the median over ten prompts. "
            "Both with what the run trained merged in, in the run's precision. bf16 weights: the size of the model "
            "written as bf16 safetensors. Test loss: the cross-entropy of the data's answers.")


def _html(rows: list[dict], notes: list[str], chart: Path) -> str:
    head = "".join(f"<th>{html.escape(t)}</th>" for t in ["run", "role", "objective", *_titles()])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in [r["run"], r["role"], r["objective"],
                                                                             *_cells(r)]) + "</tr>" for r in rows)
    items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    return ("<!doctype html><html><head><meta charset='utf-8'><title>Distillation</title><style>body{font-family:"
            "sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;"
            "text-align:right}</style></head><body><h1>Distillation: teacher and students</h1>"
            f"<table><tr>{head}</tr>{body}</table><p>{html.escape(_legend())}</p><ul>{items}</ul>"
            f"<img src='{chart.name}' alt='{chart.stem}'></body></html>\n")


def _chart(path: Path, rows: list[dict]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=100)
    names = [r["run"] for r in rows]
    colours = ["#c0504d" if r["role"] == "teacher" else "#6c8ebf" for r in rows]
    axes[0].bar(names, [r["exact_match"] or 0.0 for r in rows], color=colours)
    axes[0].set_title("exact match (higher is better)", fontsize=9)
    axes[1].bar(names, [r["tokens_per_s"] for r in rows], color=colours)
    axes[1].set_title("generation tokens/s (higher is better)", fontsize=9)
    for axis in axes:
        axis.tick_params(axis="x", rotation=45, labelsize=8)
        axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path
