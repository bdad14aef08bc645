"""The learning-rate range test read off a run's metrics.jsonl (`tuneforge lr-find`): the training loss at each
rate, smoothed (an exponential moving average with bias correction, as fastai's), and the suggested rate: a third of
the rate where the smoothed loss is lowest — a margin below the edge where the loss turns up. Beside it the steepest
descent of the smoothed loss (fastai's `steep`), which lands lower: with an exponential ramp the loss also falls
because training accumulates, so the descent is steepest well before the best rate for a short fine-tune
(bench/RESULTS.md, "Hyperparameter sweeps": the quickstart's fixed-rate row). Written into the run directory as
lr_find.json and lr_find.png."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from tuneforge.runs.layout import read_metrics

SMOOTHING = 0.9  # the moving average's weight on the past (fastai uses 0.98 over its longer default runs)
MARGIN = 3.0  # the suggestion is the lowest point's rate divided by this


@dataclass
class LrFind:
    run_dir: Path
    rates: list[float]
    losses: list[float]
    smoothed: list[float]
    suggested: float | None
    lowest: float | None  # the rate of the lowest smoothed loss
    steepest: float | None  # where the smoothed loss falls fastest against log(rate), before its lowest point
    stopped: str | None  # why the test ended before its last step

    def lines(self) -> list[str]:
        if self.suggested is None and self.lowest is None:
            return [f"lr-find: {self.run_dir}: too few steps to suggest a rate ({len(self.rates)})",
                    *([f"stopped early: {self.stopped}"] if self.stopped else [])]
        if self.suggested is None:
            return [f"lr-find: the loss did not fall over the range (lowest at {self.lowest:.3g}, the start)\n"
                    "  fix: start lower (--start) or train more steps (--steps)"]
        ended = self.lowest == self.rates[-1] and not self.stopped
        return [f"suggested learning rate: {self.suggested:.3g} (a third of the lowest smoothed loss's rate)",
                f"lowest smoothed loss at {self.lowest:.3g}; steepest descent at {self.steepest:.3g} (more "
                "conservative)",
                *(["the loss was still falling at the end of the range: raise --end to see where it turns up"]
                  if ended else []),
                *([f"stopped early: {self.stopped}"] if self.stopped else []),
                f"plot: {self.run_dir / 'lr_find.png'}"]


def smooth(losses: list[float]) -> list[float]:
    out, average = [], 0.0
    for index, loss in enumerate(losses, start=1):
        average = SMOOTHING * average + (1 - SMOOTHING) * loss
        out.append(average / (1 - SMOOTHING ** index))
    return out


def suggest(rates: list[float], smoothed: list[float]) -> tuple[float | None, float | None, float | None]:
    """(suggested, lowest, steepest): a third of the rate at the smoothed loss's minimum, that rate, and the rate
    where the smoothed loss falls fastest per unit of log(rate) before the minimum (the first and last points have
    one-sided slopes and are left out). Nothing is suggested from under five points or a loss that never fell."""
    if len(rates) < 5:
        return None, None, None
    low = min(range(len(smoothed)), key=smoothed.__getitem__)
    if low < 2:  # the loss never fell: no descent to take a rate from
        return None, rates[low], None
    slopes = {i: (smoothed[i + 1] - smoothed[i - 1]) / (math.log(rates[i + 1]) - math.log(rates[i - 1]))
              for i in range(1, low)}
    return rates[low] / MARGIN, rates[low], rates[min(slopes, key=slopes.__getitem__)]


def write_report(run_dir: Path, stopped: str | None = None) -> LrFind:
    run_dir = Path(run_dir)
    rows = [r for r in read_metrics(run_dir) if r["kind"] == "train" and math.isfinite(r["loss"])]
    rates, losses = [r["lr"] for r in rows], [r["loss"] for r in rows]
    smoothed = smooth(losses)
    found = LrFind(run_dir, rates, losses, smoothed, *suggest(rates, smoothed), stopped)
    (run_dir / "lr_find.json").write_text(json.dumps({k: v for k, v in asdict(found).items() if k != "run_dir"},
                                                     indent=1) + "\n")
    _chart(run_dir / "lr_find.png", found)
    return found


def _chart(path: Path, found: LrFind) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.6), dpi=100)
    axis.plot(found.rates, found.losses, color="lightgrey", label="loss")
    axis.plot(found.rates, found.smoothed, label="smoothed")
    if found.suggested is not None:
        axis.axvline(found.suggested, color="red", linestyle="--", label=f"suggested {found.suggested:.2g}")
        axis.axvline(found.steepest, color="grey", linestyle=":", label=f"steepest {found.steepest:.2g}")
    axis.set_xscale("log")
    axis.set_xlabel("learning rate")
    axis.set_ylabel("training loss")
    if found.smoothed:  # the divergence at the end would hide the interesting part
        axis.set_ylim(min(found.smoothed) * 0.9, max(found.smoothed[:max(2, len(found.smoothed) * 3 // 4)]) * 1.1)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
