"""Continual learning on the bundled four-task sequence (examples/continual.yaml): naive sequential LoRA, each
forgetting mitigation, and the joint multi-task run on the same data and total steps (the upper bound), side
by side in one report (markdown, HTML, a heatmap per run) with each run's time and memory.

    python -m bench.continual            # none, replay, ewc, l2sp, lwf, olora and joint
    python -m bench.continual --quick    # none, replay, ewc and joint, 15 steps a task (under 20 minutes)

Each run is `tuneforge train examples/continual.yaml` with its mitigation; the report goes to
bench/results/continual[-quick]/ and its table is printed."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from bench.common import machine_line
from tuneforge.reports.continual import write_report

ROOT = Path(__file__).parents[1]
CONFIG = ROOT / "examples" / "continual.yaml"
# each mitigation's settings in the comparison (the defaults of the strategy's schema, unless a figure here
# says otherwise)
MITIGATIONS = {
    "none": {},
    "replay": {"size": 400, "fraction": 1.0},
    "ewc": {"strength": 1.0},
    "l2sp": {"strength": 1.0},
    "lwf": {"strength": 1.0},
    "olora": {"strength": 0.5},
}
QUICK = ("none", "replay", "ewc")
# --quick: 15 steps of 8 per task (not 20), 30 test examples per task (not 40), EWC's Fisher on 32 examples
QUICK_SETTINGS = {"train": {"max_steps": 15}, "eval": {"max_examples": 30}}
QUICK_MITIGATIONS = {"ewc": {"examples": 32}}


def config(out: Path, quick: bool = False) -> dict:
    data = yaml.safe_load(CONFIG.read_text())
    data["output"] = {"dir": str(out), "overwrite": True}
    for section, values in QUICK_SETTINGS.items() if quick else ():
        data[section].update(values)
    return data


def run_one(name: str, out: Path, quick: bool = False) -> Path:
    data = config(out / name, quick)
    data["strategy"]["mitigation"] = {"name": name, **MITIGATIONS[name],
                                      **(QUICK_MITIGATIONS.get(name, {}) if quick else {})}
    return train_in_fresh_process(data, out / f"{name}.yaml")


def run_joint(name: str, out: Path, quick: bool = False) -> Path:
    """The same tasks mixed in one phase, as many steps as the sequence has in all, scored before and after."""
    data = config(out / name, quick)
    data["strategy"] = {"name": "single"}
    data["train"]["max_steps"] *= len({spec["task"] for spec in data["data"]["train"]})
    data["eval"]["compare_base"] = True
    return train_in_fresh_process(data, out / f"{name}.yaml")


def train_in_fresh_process(data: dict, path: Path) -> Path:
    """`tuneforge train` in its own process, so that each run's peak memory is its own."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    subprocess.run([sys.executable, "-m", "tuneforge.cli", "train", str(path), "--quiet"], check=True,
                   stdout=subprocess.DEVNULL)
    return Path(data["output"]["dir"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="none, replay, ewc and joint; 15 steps a task, 30 test examples a task")
    parser.add_argument("--only", nargs="*", choices=[*MITIGATIONS, "joint"],
                        help="rerun these (mitigations, joint); the report covers every finished run in --out")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or ROOT / "bench" / "results" / ("continual-quick" if args.quick else "continual")
    wanted = (*QUICK, "joint") if args.quick else (*MITIGATIONS, "joint")
    names = args.only or wanted
    started, seconds = time.perf_counter(), {}
    for name in names:
        began = time.perf_counter()
        (run_joint if name == "joint" else run_one)(name, out / "runs", args.quick)
        seconds[name] = round(time.perf_counter() - began, 1)
        print(f"{name}: {seconds[name]:.0f} s", flush=True)
    finished = {n: out / "runs" / n for n in wanted
                if json.loads(_read(out / "runs" / n / "run.json") or "{}").get("status") == "complete"}
    joint = finished.pop("joint", None)
    machine_file = out / "machine.json"
    machine = json.loads(_read(machine_file) or "{}")
    machine.update({"machine": machine_line(), "cores": os.cpu_count()})
    machine.setdefault("seconds", {}).update(seconds)  # each run's wall time, whole process (load, train, eval)
    machine_file.write_text(json.dumps(machine, indent=1))
    files = write_report(out, finished, joint, title="Continual learning: the bundled four-task sequence",
                         seconds=machine["seconds"])
    print(files["markdown"].read_text())
    print(f"this call {time.perf_counter() - started:.0f} s; each run: {machine['seconds']}")
    print(f"report: {files['markdown']} and {files['html']}")


def _read(path: Path) -> str | None:
    return path.read_text() if path.is_file() else None


if __name__ == "__main__":
    main()
