"""Adapter merging on the bundled task sequence: one LoRA per task on the default model
(`strategy: multitask`, `adapters: per_task`), then pairs and all four folded into one adapter by
`tuneforge merge` (TIES, DARE-TIES, linear), each merged adapter scored on every task it holds. The figure is
retention: a merged adapter's score on a task over that task's own adapter's score.

    python -m bench.merge            # writes bench/results/merge/report.md and prints it"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import yaml

from bench.common import machine_line
from tuneforge.api import train
from tuneforge.runs.evaluate import evaluate_run
from tuneforge.runs.merge import merge_runs
from tuneforge.runs.trained import load_trained

ROOT = Path(__file__).parents[1]
CONFIG = ROOT / "examples" / "continual.yaml"
HOWS = (("ties", 1.0), ("dare_ties", 1.0), ("linear", None))


def main() -> None:
    out = ROOT / "bench" / "results" / "merge"
    started = time.perf_counter()
    data = yaml.safe_load(CONFIG.read_text())
    data["strategy"] = {"name": "multitask", "adapters": "per_task"}
    data["output"] = {"dir": str(out / "per_task"), "overwrite": True}
    data["eval"]["compare_base"] = False
    result = train(data, quiet=True)
    tests = {spec["task"]: spec["path"] for spec in data["data"]["test"]}
    own = {task: json.loads((result.run_dir / "adapters" / task / "eval.json").read_text())["after"]["exact_match"]
           for task in tests}
    rows = []
    groups = [*itertools.combinations(tests, 2), tuple(tests)]
    for group in groups:
        for how, weight in HOWS:
            merged_dir = merge_runs([result.run_dir / "adapters" / t for t in group], out / "merged" / (
                "+".join(group) + f"-{how}"), how=how, weights=[weight] * len(group) if weight else None,
                density=0.5, overwrite=True)
            trained = load_trained(merged_dir)
            scores = {t: evaluate_run(trained, tests[t], ["exact_match"], batch_size=100, max_new_tokens=12,
                                      max_examples=data["eval"]["max_examples"])[0]["exact_match"] for t in group}
            rows.append({"tasks": list(group), "how": how, "scores": scores,
                         "retention": {t: scores[t] / own[t] if own[t] else None for t in group}})
            print(rows[-1], flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps({"own": own, "merged": rows}, indent=1))
    lines = ["# Merging per-task LoRA adapters", "",
             "Each task's own adapter (exact match on its test set): "
             + ", ".join(f"{t} {s:.1f}" for t, s in own.items()) + ".", "",
             "| tasks | merge | scores | retention (merged / own) | worst retention |", "|---|---|---|---|---|"]
    for row in rows:
        kept = [v for v in row["retention"].values() if v is not None]
        worst = f"{min(kept):.0%}" if kept else "–"
        scores = ", ".join(f"{t} {s:.1f}" for t, s in row["scores"].items())
        retention = ", ".join(f"{t} {r:.0%}" for t, r in row["retention"].items() if r is not None)
        lines.append(f"| {' + '.join(row['tasks'])} | {row['how']} | {scores} | {retention} | {worst} |")
    lines += ["", f"{time.perf_counter() - started:.0f} s in all; {machine_line()}."]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
