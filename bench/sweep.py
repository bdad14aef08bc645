"""Hyperparameter search on the quickstart (examples/sweep.yaml): the config's hand-set values beside three searches
with the same number of trials and steps — TPE with the median pruner, TPE without pruning, and an Axolotl-style
grid (every combination of learning rate and LoRA rank, no pruning) — then the learning-rate range test (`lr-find`)
beside a row of fixed learning rates, to show whether its suggestion lands where the task trains well. A fourth
search is cost-aware: two objectives (exact match up, the trial's training time down) with train.max_steps searched
too, and its Pareto front printed beside the hand-set config's score and time.

    python -m bench.sweep --quick      # 8 trials of 12 steps, 50 test questions (each search ~10 min on 2 cores)
    python -m bench.sweep              # 16 trials of 30 steps, 100 test questions
    python -m bench.sweep --only lr    # the range test and the fixed rates alone
    python -m bench.sweep --quick --only cost --trials 16   # the cost-aware search alone, beside the hand-set run

Each search reports its best held-out exact match, the training steps all its trials took, and its wall time; the
runs go to bench/results/sweep/."""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from bench.common import machine_line

ROOT = Path(__file__).parents[1]
CONFIG = ROOT / "examples" / "sweep.yaml"
GRID = {"train.lr": [3e-4, 1e-3, 3e-3, 1e-2], "method.r": [4, 16]}  # 8 combinations
FIXED = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2]
QUICK = ["--trials", "8", "--steps", "12", "--max-test", "50"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the smaller preset: " + " ".join(QUICK))
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--steps", type=int, default=30, help="each trial's optimizer steps")
    parser.add_argument("--max-test", type=int, default=100, help="held-out questions per evaluation")
    parser.add_argument("--seed", type=int, default=0, help="the samplers' seed")
    parser.add_argument("--only", choices=["search", "tpe", "grid", "cost", "lr"], default=None,
                        help="the searches; TPE with the median pruner, the grid or the cost-aware search alone "
                        "(each beside the hand-set run); or the range test")
    parser.add_argument("--config", type=Path, default=CONFIG, help="the config searched (its hand-set values are "
                        "the baseline; without a sweep: section, --space gives one)")
    parser.add_argument("--space", default=None, help="the space as YAML (sweep.space), replacing the config's")
    parser.add_argument("--grid", default=None, help="the grid's space as YAML (default: lr x LoRA r, 8 points)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "sweep")
    argv = list(argv if argv is not None else sys.argv[1:])
    args = parser.parse_args([*QUICK, *argv] if "--quick" in argv else argv)
    print(machine_line())
    if args.only != "lr":
        searches(args)
    if args.only is None or args.only == "lr":
        range_test(args)


def overrides(args, **extra: object) -> list[str]:
    base = {"train.max_steps": args.steps, "train.eval_every": max(1, args.steps // 3),
            "eval.max_examples": args.max_test, "sweep.trials": args.trials, "sweep.seed": args.seed,
            "output.overwrite": "true"}
    if args.space:  # a space of one's own, for a config that may have no sweep: section
        base |= {"sweep.space": args.space, "sweep.objectives": "[{metric: exact_match, direction: maximize}]"}
    return [f"{key}={value}" for key, value in {**base, **extra}.items()]


def searches(args) -> None:
    import tuneforge.api as tf
    from tuneforge.reports.sweep import read_trials, savings

    rows = []
    started = time.perf_counter()
    hand = tf.train(args.config, overrides(args, **{"output.dir": str(args.out / "hand-set")}), quiet=True)
    rows.append(("hand-set config", hand.eval_after.get("exact_match"), hand.steps, time.perf_counter() - started,
                 "1 run"))
    grid = args.grid or "{" + ", ".join(f"{key}: {{choices: {values}}}" for key, values in GRID.items()) + "}"
    lengths = sorted({args.steps // 3, args.steps // 2, 2 * args.steps // 3, args.steps})
    costly = ("{train.lr: {low: 1.0e-4, high: 1.0e-2, log: true}, method.r: {choices: [4, 8, 16, 32]}, "
              f"method.alpha: {{choices: [8, 16, 32, 64]}}, train.max_steps: {{choices: {lengths}}}}}")
    fronts = []
    for name, extra in (("TPE + median pruner", {"sweep.pruner": "median"}),
                        ("TPE, no pruning", {"sweep.pruner": "none"}),
                        ("grid (Axolotl-style), no pruning", {"sweep.sampler": "grid", "sweep.pruner": "none",
                                                              "sweep.space": grid}),
                        ("TPE, exact match and training time (max_steps searched)", {
                            "sweep.pruner": "none", "sweep.space": costly, "train.warmup_steps": 0,
                            "train.warmup_ratio": 0.4, "sweep.objectives":
                            "[{metric: exact_match, direction: maximize}, {metric: wall_s, direction: minimize}]"})):
        wanted = {"cost": "sweep.objectives" in extra, "tpe": name == "TPE + median pruner",
                  "grid": name.startswith("grid")}.get(args.only, True)
        if not wanted:
            continue
        out = args.out / ("cost" if "sweep.objectives" in extra else name.split(" ")[0].lower().strip(",")) \
            / extra["sweep.pruner"]
        shutil.rmtree(out, ignore_errors=True)  # the previous measurement's study
        started = time.perf_counter()
        result = tf.sweep(args.config, out, overrides(args, **extra), quiet=True)
        seconds = time.perf_counter() - started
        record = read_trials(out)
        steps = sum(t["steps"] or 0 for t in record["trials"])
        saved = savings(record)
        best = max(t["scores"]["exact_match"] for t in result.best) if result.best else None
        if "sweep.objectives" in extra:
            fronts = sorted(result.best, key=lambda t: t["scores"]["wall_s"])
        note = (f"{len(record['trials'])} trials, {100 * saved['saved_fraction']:.0f}% of the steps pruned"
                if saved else f"{len(record['trials'])} trials")
        rows.append((name, best, steps, seconds, note))
    print("\n| search | best exact match | training steps | wall time | |\n|---|---|---|---|---|")
    for name, best, steps, seconds, note in rows:
        print(f"| {name} | {'—' if best is None else f'{best:.0f}%'} | {steps} | {seconds / 60:.1f} min | {note} |")
    if not fronts:
        return
    print("\nThe last search's Pareto front (exact match against the trial's training time):\n\n"
          "| trial | exact match | training time | steps | train.lr | LoRA r, alpha |\n|---|---|---|---|---|---|")
    for t in fronts:
        p = t["params"]
        print(f"| {t['number']} | {t['scores']['exact_match']:.0f}% | {t['scores']['wall_s']:.0f} s | {t['steps']} "
              f"| {p['train.lr']:.2e} | {p['method.r']}, {p['method.alpha']} |")
    print(f"\n(the hand-set config: {rows[0][1]:.0f}% after {rows[0][2]} steps, {hand.train.get('wall_s', 0):.0f} s "
          "of training)")


def range_test(args) -> None:
    import tuneforge.api as tf
    from tuneforge.runs.layout import read_metrics

    found = tf.lr_find(CONFIG, [f"output.dir={args.out / 'lr'}", "output.overwrite=true"], start=1e-6, end=1.0,
                       steps=60, quiet=True)
    print("\n".join(found.lines()))
    import math

    nearest = min(FIXED, key=lambda r: abs(math.log(r / found.suggested))) if found.suggested else None
    print("\n| train.lr | exact match | final training loss |\n|---|---|---|")
    for rate in FIXED:
        run = tf.train(CONFIG, overrides(args, **{"train.lr": rate, "output.dir": str(args.out / f"lr-{rate:g}")}),
                       quiet=True)
        last = [r["loss"] for r in read_metrics(run.run_dir) if r["kind"] == "train"][-1]
        marker = " nearest lr-find's suggestion" if rate == nearest else ""
        print(f"| {rate:g} | {run.eval_after.get('exact_match', float('nan')):.0f}% | {last:.3f} |{marker}")


if __name__ == "__main__":
    main()
