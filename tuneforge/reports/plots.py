"""loss.png: training loss (and held-out loss when evaluated) against step, from metrics.jsonl."""

from __future__ import annotations

from pathlib import Path

from tuneforge.runs.layout import read_metrics

LOSS_PLOT = "loss.png"


def plot_loss(run_dir: str | Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(Path(run_dir))
    train = [(r["step"], r["loss"]) for r in rows if r["kind"] == "train" and "loss" in r]
    held_out = [(r["step"], r["loss"]) for r in rows if r["kind"] in ("eval", "final_eval") and "loss" in r]
    if not train:
        return None
    figure, axes = plt.subplots(figsize=(7, 4), dpi=110)
    axes.plot(*zip(*train, strict=True), label="train loss", linewidth=1.2)
    if held_out:
        axes.plot(*zip(*held_out, strict=True), "o-", label="held-out loss")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss (mean NLL per trained token)")
    axes.set_title(Path(run_dir).name)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    path = Path(run_dir) / LOSS_PLOT
    figure.savefig(path)
    plt.close(figure)
    return path


CONFUSION_PLOT = "confusion.png"


def plot_confusion(run_dir: str | Path) -> Path | None:
    """confusion.png: a classification run's confusion matrix on its test data (eval.json), true class by row."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    try:
        confusion = json.loads((Path(run_dir) / "eval.json").read_text())["after"]["confusion"]
        names, matrix = confusion["labels"], confusion["matrix"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    size = 2.5 + 0.45 * len(names)
    figure, axes = plt.subplots(figsize=(size + 1, size), dpi=110)
    image = axes.imshow(matrix, cmap="Blues")
    axes.set_xticks(range(len(names)), names, rotation=45, ha="right")
    axes.set_yticks(range(len(names)), names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    peak = max(max(row) for row in matrix) or 1
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            axes.text(j, i, str(count), ha="center", va="center", color="white" if count > peak / 2 else "black")
    figure.colorbar(image, ax=axes)
    axes.set_title(f"{Path(run_dir).name}: confusion on the test data")
    figure.tight_layout()
    path = Path(run_dir) / CONFUSION_PLOT
    figure.savefig(path)
    plt.close(figure)
    return path
