"""Training on a JSON Lines file larger than memory with `data.streaming: true`: the peak resident memory of
`tuneforge train` (the default model, LoRA, a few steps) on a file of `--gb` gigabytes, then a kill -9 in the middle
of the run and `--resume`, checked to train the same records at every step as the uninterrupted run.

    python -m bench.stream --gb 10      # writes a 10 GB file under --work (default: a temporary directory)
    python -m bench.stream --gb 0.5     # a quicker look

The file is chat records (`bench.common.write_chat_workload`'s lengths), each numbered so that no two are alike.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench.common import lognormal_words

STEPS = 6


def write_file(path: Path, gigabytes: float) -> int:
    """Numbered chat records up to `gigabytes`; a block of distinct records written at a time."""
    rng, target, written, count = random.Random(0), int(gigabytes * 1e9), 0, 0
    pool = [(lognormal_words(rng, 60, 5, 300), lognormal_words(rng, 45, 3, 200)) for _ in range(2000)]
    with path.open("w") as handle:
        while written < target:
            lines = []
            for prompt, answer in pool:
                lines.append(json.dumps({"messages": [{"role": "user", "content": f"[{count}] {prompt}"},
                                                      {"role": "assistant", "content": answer}]}) + "\n")
                count += 1
            chunk = "".join(lines)
            handle.write(chunk)
            written += len(chunk)
    return count


def config_for(work: Path, data: Path, name: str, streaming: bool = True) -> Path:
    config = {"model": "default", "method": {"name": "lora", "r": 8},
              "data": {"train": str(data), "test": str(work / "test.jsonl"), "streaming": streaming,
                       "max_seq_len": 512},
              "train": {"max_steps": STEPS, "batch_size": 2, "save_every": 1, "keep_last": 10, "seed": 1},
              "eval": {"metrics": ["loss"], "max_examples": 8},
              "output": {"dir": str(work / name), "tensorboard": False}}
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def train(config: Path, *extra: str, kill_after_step: int | None = None) -> tuple[float, float, int]:
    """(seconds, peak RSS of the training process in GiB, exit status); killed with SIGKILL once the checkpoint of
    `kill_after_step` is written."""
    command = [sys.executable, "-m", "tuneforge.cli", "train", str(config), "--quiet", *extra]
    started = time.perf_counter()
    process = subprocess.Popen(command)
    checkpoint = config.parent / config.stem / "checkpoints" / f"step-{kill_after_step or 0:08d}"
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)  # this process's own peak, not the largest child's
        if pid:
            return time.perf_counter() - started, usage.ru_maxrss / 2**20, os.waitstatus_to_exitcode(status)
        if kill_after_step and checkpoint.is_dir():
            os.kill(process.pid, signal.SIGKILL)
        time.sleep(0.05)


def samples(run: Path) -> list[list[int]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["samples"] for r in rows if r["kind"] == "train"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, default=10.0)
    parser.add_argument("--work", type=Path, help="where the file and runs go (kept); default a temporary directory")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="tuneforge-bench-stream-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        data = work / "train.jsonl"
        started = time.perf_counter()
        records = write_file(data, args.gb) if not data.is_file() else sum(1 for _ in data.open("rb"))
        (work / "test.jsonl").write_text("".join(data.open().readline() for _ in range(1)))
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
              f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB memory")
        print(f"data: {data.stat().st_size / 1e9:.2f} GB, {records:,} records (written in "
              f"{time.perf_counter() - started:.0f} s)")
        small = work / "small.jsonl"  # the file's first 20,000 records, trained in memory: what the model costs
        with data.open() as whole:
            small.write_text("".join(whole.readline() for _ in range(20_000)))
        seconds, rss, status = train(config_for(work, small, "in-memory", streaming=False))
        print(f"the same training on its first 20,000 records in memory: {seconds:.0f} s, exit {status}, peak RSS "
              f"{rss:.2f} GiB")
        seconds, rss, status = train(config_for(work, data, "full"))
        print(f"streamed, uninterrupted: {STEPS} steps in {seconds:.0f} s, exit {status}, peak RSS {rss:.2f} GiB "
              "(the training process's)")
        killed = config_for(work, data, "cut")
        _, _, status = train(killed, kill_after_step=3)
        _, rss, resumed = train(killed, "--resume")
        same = samples(work / "cut") == samples(work / "full")
        print(f"kill -9 after step 3's checkpoint (exit {status}), --resume (exit {resumed}): the same records at "
              f"every step as the uninterrupted run: {same}; peak RSS of the resumed run {rss:.2f} GiB")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
