"""Continual learning on the bundled four-task sequence (examples/continual.yaml): naive sequential LoRA, each
forgetting mitigation, and the joint multi-task run on the same data and total steps (the upper bound), side
by side in one report (markdown, HTML, a heatmap per run) with each run's time and memory.

    python -m bench.continual            # none, replay, ewc, l2sp, lwf, olora and joint
    python -m bench.continual --quick    # none, replay, ewc and joint (under 20 minutes on 2 CPU cores)

Each run is `tuneforge train examples/continual.yaml` with its mitigation; the report goes to
bench/results/continual[-quick]/ and its table is printed."""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tuneforge.reports.continual import write_report

ROOT = Path(__file__).parents[1]
CONFIG = ROOT / "examples" / "continual.yaml"
# each mitigation's settings in the comparison (the defaults of the strategy's schema, unless a figure here
# says otherwise)
MITIGATIONS = {
    "none": {},
    "replay": {"size": 200, "fraction": 0.25},
    "ewc": {"strength": 1.0},
    "l2sp": {"strength": 1.0},
    "lwf": {"strength": 1.0},
    "olora": {"strength": 0.5},
}
QUICK = ("none", "replay", "ewc")


def config(out: Path) -> dict:
    data = yaml.safe_load(CONFIG.read_text())
    data["output"] = {"dir": str(out), "overwrite": True}
    return data


def run_one(name: str, out: Path) -> Path:
    data = config(out / name)
    data["strategy"]["mitigation"] = {"name": name, **MITIGATIONS[name]}
    return train_in_fresh_process(data, out / f"{name}.yaml")


def run_joint(out: Path) -> Path:
    """The same tasks mixed in one phase, as many steps as the sequence has in all, scored before and after."""
    data = config(out / "joint")
    data["strategy"] = {"name": "single"}
    data["train"]["max_steps"] *= len({spec["task"] for spec in data["data"]["train"]})
    data["eval"]["compare_base"] = True
    return train_in_fresh_process(data, out / "joint.yaml")


def train_in_fresh_process(data: dict, path: Path) -> Path:
    """`tuneforge train` in its own process, so that each run's peak memory is its own."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    subprocess.run([sys.executable, "-m", "tuneforge.cli", "train", str(path), "--quiet"], check=True,
                   stdout=subprocess.DEVNULL)
    return Path(data["output"]["dir"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="none, replay, ewc and joint only")
    parser.add_argument("--only", nargs="*", help="these mitigations only (and joint)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or ROOT / "bench" / "results" / ("continual-quick" if args.quick else "continual")
    names = args.only or (QUICK if args.quick else tuple(MITIGATIONS))
    started, runs = time.perf_counter(), {}
    for name in names:
        began = time.perf_counter()
        runs[name] = run_one(name, out / "runs")
        print(f"{name}: {time.perf_counter() - began:.0f} s", flush=True)
    began = time.perf_counter()
    joint = run_joint(out / "runs")
    print(f"joint: {time.perf_counter() - began:.0f} s", flush=True)
    files = write_report(out, runs, joint, title="Continual learning: the bundled four-task sequence")
    machine = {"machine": platform.machine(), "processor": platform.processor(), "cpu_flags": _cpu_flags(),
               "total_s": round(time.perf_counter() - started, 1)}
    (out / "machine.json").write_text(json.dumps(machine, indent=1))
    print(files["markdown"].read_text())
    print(f"total {machine['total_s']:.0f} s; report: {files['markdown']} and {files['html']}")


def _cpu_flags() -> str:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return ""
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    return " ".join(flag for flag in wanted if f" {flag}" in flags)


if __name__ == "__main__":
    main()
