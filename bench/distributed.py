"""Data-parallel scaling: training tokens per second with 1 and with N processes (`tuneforge train --nproc N`),
the same config and the same global batch, each run a fresh command in its own processes.

    python -m bench.distributed                  # 1 and 2 processes, DDP and FSDP, the default model, LoRA
    python -m bench.distributed --nproc 1,2,4,8  # on a machine with that many GPUs (or cores)
    python -m bench.distributed --quick          # fewer steps

Throughput is measured over the steps after the first two (warm-up), from each step's own time and tokens in
metrics.jsonl; efficiency = (tokens/s with N) / (N x tokens/s with 1). On a CPU, N processes share the cores one
process used (its threads split among them), so the efficiency there says what the gradient exchange and the
split cost, not what N devices would gain. Results go to bench/results/distributed[-quick]/."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from bench.common import machine_line

ROOT = Path(__file__).parents[1]


def run(nproc: int, how: str, steps: int, out: Path, grad_accum: int) -> dict:
    run_dir = out / "runs" / f"{how}-{nproc}"
    command = [sys.executable, "-m", "tuneforge", "train", str(ROOT / "examples" / "quickstart.yaml"),
               f"output.dir={run_dir}", "output.overwrite=true", f"train.max_steps={steps}", "train.batch_size=8",
               f"train.grad_accum={grad_accum}", "train.save_every=0", "eval.compare_base=false",
               "eval.max_examples=1", "output.tensorboard=false", f"train.distributed={how}", "--quiet",
               "--nproc", str(nproc)]
    subprocess.run(command, check=True, capture_output=True, text=True)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps_ = [r for r in rows if r["kind"] == "train"][2:]
    tokens, seconds = sum(r["tokens"] for r in steps_), sum(r["step_time_s"] for r in steps_)
    return {"processes": nproc, "how": how, "tokens_per_s": tokens / seconds, "steps": len(steps_),
            "peak_memory_gib_rank0": max(r["peak_memory_gib"] for r in steps_),
            "final_loss": [r for r in rows if r["kind"] == "train"][-1]["loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc", default="1,2", help="comma list of process counts")
    parser.add_argument("--how", default="ddp,fsdp", help="ddp, fsdp or both")
    parser.add_argument("--quick", action="store_true", help="8 steps a run instead of 20")
    args = parser.parse_args()
    counts = [int(n) for n in args.nproc.split(",")]
    steps = 8 if args.quick else 20
    grad_accum = max(counts)  # every count shares each window: the same global batch everywhere
    out = ROOT / "bench" / "results" / ("distributed-quick" if args.quick else "distributed")
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for how in args.how.split(","):
        for nproc in counts:
            if nproc == 1 and how != args.how.split(",")[0]:
                continue  # one process is the same run whatever the sharing
            results.append(run(nproc, how, steps, out, grad_accum))
            print(json.dumps(results[-1]), flush=True)
    single = next(r["tokens_per_s"] for r in results if r["processes"] == 1)
    lines = [f"# Data-parallel scaling ({'quick' if args.quick else 'full'})", "", machine_line(), "",
             f"`python -m bench.distributed{' --quick' if args.quick else ''}`: default model, LoRA r 16, "
             f"global batch 8 x {grad_accum} sequences, {steps} steps (the first 2 not timed).", "",
             "| processes | sharing | tokens/s | speed-up | efficiency | peak memory rank 0 (GiB) | last loss |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        speedup = r["tokens_per_s"] / single
        lines.append(f"| {r['processes']} | {r['how'] if r['processes'] > 1 else '-'} | {r['tokens_per_s']:.0f} | "
                     f"{speedup:.2f}x | {speedup / r['processes']:.0%} | {r['peak_memory_gib_rank0']:.2f} | "
                     f"{r['final_loss']:.4f} |")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps({"machine": machine_line(), "results": results}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
