"""The report of a `tuneforge sweep`, from its trials.json alone: every trial (state, values, scores, steps trained,
why it stopped), the best trial or the Pareto front, each searched key's importance, and what pruning saved;
sweep.png shows the optimisation history, the parallel coordinates of the complete trials and, with two objectives,
the Pareto front. Written into the sweep folder as sweep.md, sweep.html and sweep.png."""

from __future__ import annotations

import html
import json
import statistics
from pathlib import Path

from tuneforge.reports.pages import write_pages


def read_trials(out: Path) -> dict:
    return json.loads((Path(out) / "trials.json").read_text())


def write_report(out: Path) -> dict[str, Path]:
    return write_pages(Path(out), "sweep", read_trials(out), markdown, _html, _chart)


def savings(record: dict) -> dict:
    """Steps the trials trained against what they would have without pruning: a stopped trial would have trained
    as many as a complete one (their median)."""
    trials = [t for t in record["trials"] if t["steps"] is not None and t["state"] in ("COMPLETE", "PRUNED")]
    full = [t["steps"] for t in trials if t["state"] == "COMPLETE"]
    if not full:
        return {}
    whole = statistics.median(full)
    trained = sum(t["steps"] for t in trials)
    unpruned = sum(t["steps"] if t["state"] == "COMPLETE" else whole for t in trials)
    return {"trained_steps": trained, "steps_without_pruning": unpruned,
            "saved_fraction": 1 - trained / unpruned if unpruned else 0.0}


def _value(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _rows(record: dict) -> tuple[list[str], list[str], list[list[str]]]:
    metrics = [o["metric"] for o in record["objectives"]]
    keys = list(dict.fromkeys(k for t in record["trials"] for k in t["params"]))
    rows = []
    for t in record["trials"]:
        rows.append([str(t["number"]), t["state"].lower(), *(_value(t["params"].get(k, "—")) for k in keys),
                     *(_value(t["scores"][m]) if m in t["scores"] else "—" for m in metrics),
                     "—" if t["steps"] is None else str(t["steps"]), t.get("reason") or ""])
    return keys, metrics, rows


def markdown(record: dict, chart: str | None = None) -> str:
    keys, metrics, rows = _rows(record)
    goal = ", ".join(f"{o['direction']} {o['metric']}" for o in record["objectives"])
    pruner = record["pruner"] + (" (off: Optuna prunes single-objective studies only)"
                                 if len(metrics) > 1 and record["pruner"] != "none" else "")
    lines = ["# Sweep", "", f"{len(record['trials'])} trials; {goal}; sampler {record['sampler']}, pruner {pruner}.",
             ""]
    best = [t for t in record["trials"] if t["number"] in record["best"]]
    if best:
        lines += ["## Best" if len(best) == 1 else "## Pareto front", ""]
        lines += [f"- trial {t['number']}: " + ", ".join(f"{m} {_value(v)}" for m, v in t["scores"].items())
                  + " — " + ", ".join(f"{k}={_value(v)}" for k, v in t["params"].items()) for t in best]
        lines += ["", "best.yaml holds the first one's config: `tuneforge train best.yaml`.", ""]
    if record.get("importance"):
        lines += ["## Importance (fANOVA, first objective)", "", "| key | importance |", "| --- | --- |"]
        lines += [f"| {k} | {v:.3f} |" for k, v in record["importance"].items()] + [""]
    saved = savings(record)
    if saved:
        lines += ["## Pruning", "", f"The trials trained {saved['trained_steps']:.0f} steps; without pruning, "
                  f"{saved['steps_without_pruning']:.0f} (a stopped trial counted as a complete one's median): "
                  f"{100 * saved['saved_fraction']:.0f}% saved.", ""]
    header = ["trial", "state", *keys, *metrics, "steps", "why it stopped"]
    lines += ["## Trials", "", "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|").replace("\n", " ") for cell in row) + " |" for row in rows]
    if chart:
        lines += ["", f"![sweep]({chart})"]
    return "\n".join(lines) + "\n"


def _html(record: dict, chart: str) -> str:
    keys, metrics, rows = _rows(record)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ["trial", "state", *keys, *metrics, "steps",
                                                          "why it stopped"])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    best = "".join(f"<li>trial {t['number']}: {html.escape(json.dumps(t['scores']))} — "
                   f"{html.escape(json.dumps(t['params']))}</li>" for t in record["trials"]
                   if t["number"] in record["best"])
    importance = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.3f}</td></tr>"
                         for k, v in record.get("importance", {}).items())
    return ("<!doctype html><html><head><meta charset='utf-8'><title>Sweep</title><style>body{font-family:"
            "sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}"
            "img{max-width:100%}</style></head><body><h1>Sweep</h1>"
            f"<h2>Best</h2><ul>{best or '<li>no complete trial</li>'}</ul>"
            + (f"<h2>Importance</h2><table>{importance}</table>" if importance else "")
            + f"<h2>Trials</h2><table><tr>{head}</tr>{body}</table><img src='{html.escape(chart)}' alt='sweep'>"
            "</body></html>\n")


def _chart(path: Path, record: dict) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    objectives = record["objectives"]
    first, sign = objectives[0]["metric"], 1 if objectives[0]["direction"] == "minimize" else -1
    complete = [t for t in record["trials"] if t["state"] == "COMPLETE" and first in t["scores"]]
    panels = 3 if len(objectives) == 2 else 2
    figure, axes = plt.subplots(1, panels, figsize=(4.5 * panels, 3.4), dpi=100, squeeze=False)
    history, parallel = axes[0][0], axes[0][1]
    if complete:
        numbers = [t["number"] for t in complete]
        scores = [t["scores"][first] for t in complete]
        best = [sign * min(sign * s for s in scores[:i + 1]) for i in range(len(scores))]
        history.scatter(numbers, scores, s=14, label="complete trial")
        history.step(numbers, best, where="post", color="black", label="best so far")
    for t in record["trials"]:  # a pruned trial's last reported score
        if t["state"] == "PRUNED" and t["intermediate"]:
            history.scatter([t["number"]], [list(t["intermediate"].values())[-1]], marker="x", color="grey", s=14)
    history.set_xlabel("trial")
    history.set_ylabel(first)
    history.set_title("optimisation history (x: pruned)", fontsize=9)
    history.legend(fontsize=7)
    keys = [k for k in dict.fromkeys(k for t in complete for k in t["params"])
            if all(isinstance(t["params"].get(k), int | float) for t in complete)]
    if complete and keys:
        spans = {k: (min(t["params"][k] for t in complete), max(t["params"][k] for t in complete)) for k in keys}
        scores = [t["scores"][first] for t in complete]
        low, high = min(scores), max(scores)
        colours = plt.get_cmap("viridis_r" if sign > 0 else "viridis")
        for t, score in zip(complete, scores, strict=True):
            ys = [(t["params"][k] - spans[k][0]) / ((spans[k][1] - spans[k][0]) or 1) for k in keys]
            parallel.plot(range(len(keys)), ys, color=colours((score - low) / ((high - low) or 1)), alpha=0.8)
        parallel.set_xticks(range(len(keys)), keys, fontsize=7, rotation=20)
        parallel.set_yticks([0, 1], ["low", "high"])
    parallel.set_title(f"parallel coordinates (colour: {first}, light = better)", fontsize=9)
    if panels == 3:
        second = objectives[1]["metric"]
        front = [t for t in complete if t["number"] in record["best"]]
        axes[0][2].scatter([t["scores"][second] for t in complete], [t["scores"][first] for t in complete], s=14,
                           color="grey", label="trial")
        axes[0][2].scatter([t["scores"][second] for t in front], [t["scores"][first] for t in front], s=20,
                           color="red", label="Pareto front")
        axes[0][2].set_xlabel(second)
        axes[0][2].set_ylabel(first)
        axes[0][2].legend(fontsize=7)
        axes[0][2].set_title("Pareto front", fontsize=9)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path
