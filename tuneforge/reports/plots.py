"""loss.png: training loss (and held-out loss when evaluated) against step, from metrics.jsonl."""

from __future__ import annotations

from pathlib import Path

from tuneforge.engine.tracking import read_metrics

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
