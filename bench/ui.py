"""The web UI's two speed promises, on this machine: the runs page lists 200 run directories in under a second, and a
metrics row a run writes appears in an open page within 2 seconds.

    python -m bench.ui [--runs 200] [--rows 20]

The 200 runs are records shaped as real runs write them (config.yaml, run.json with its fingerprint, eval.json
with 50 samples, 60 metrics rows), one in five still training (its lock held here). The listing is timed as a
browser gets it (GET /api/runs over HTTP, best and median of 5). The row latency is measured in headless Chromium
when Debian's chromium and chromedriver are installed: the run page open, a row appended to the run's metrics.jsonl,
the time until the page's chart holds its point (median and worst of `--rows`); without them, over the event
stream the page reads."""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from tuneforge.runs.lock import run_lock
from tuneforge.web.ui import start_ui


def write_runs(root: Path, count: int) -> list[Path]:
    runs = []
    for i in range(count):
        run = root / f"group-{i // 50}" / f"run-{i:03d}"
        run.mkdir(parents=True)
        config = {"task": "causal_lm", "model": {"path": "default", "trust_remote_code": False},
                  "method": {"name": ["lora", "ia3", "dora", "full"][i % 4], "r": 16, "alpha": 32},
                  "objective": {"name": "sft"}, "strategy": {"name": "single"},
                  "data": {"train": [{"path": "quickstart:train", "weight": 1.0, "format": "auto"}],
                           "test": [{"path": "quickstart:test"}], "max_seq_len": 128},
                  "train": {"max_steps": 60, "batch_size": 16, "lr": 2e-3, "schedule": "cosine", "seed": i},
                  "eval": {"metrics": ["loss", "exact_match", "rouge", "bleu"], "max_new_tokens": 16},
                  "output": {"dir": str(run), "tensorboard": True}}
        (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        (run / "run.json").write_text(json.dumps({"status": "training" if i % 5 == 0 else "complete",
                                                  "fingerprint": {"data": "ab" * 32, "config": "cd" * 32,
                                                                  "tokenizer": "ef" * 32},
                                                  "parameters": 134_515_008, "trainable_parameters": 4_884_480,
                                                  "train": {"steps": 60, "wall_s": 61.5},
                                                  "weights": {"adapter_model.safetensors": "01" * 32}}, indent=2))
        samples = [{"prompt": f"What is the date 3 days after 2024-03-{d % 28 + 1:02d}?",
                    "reference": f"2024-03-{d % 28 + 4:02d}", "prediction": f"2024-03-{d % 28 + 4:02d}"}
                   for d in range(50)]
        (run / "eval.json").write_text(json.dumps({"before": {"loss": 2.1, "exact_match": 12.0},
                                                   "after": {"loss": 0.4, "exact_match": 90.0 + i % 10},
                                                   "samples": samples}, indent=2))
        rows = [{"step": s, "kind": "train", "time": 1_700_000_000 + s, "loss": 2.0 / s, "lr": 2e-3,
                 "grad_norm": 1.1, "tokens": 2048, "step_time_s": 0.9, "peak_memory_gib": 1.2}
                for s in range(1, 61)]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        runs.append(run)
    return runs


def time_listing(url: str, count: int) -> list[float]:
    times = []
    for _ in range(5):
        start = time.perf_counter()
        listed = httpx.get(url + "api/runs", timeout=60).json()["runs"]
        times.append(time.perf_counter() - start)
        assert len(listed) == count, len(listed)
    return times


def row_latency_in_browser(url: str, run: Path, rows: int) -> list[float] | None:
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        return None
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    options.binary_location = chromium
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    latencies = []
    try:
        driver.get(url + "#/run/" + run.parent.name + "/" + run.name)
        _until(lambda: driver.execute_script("return window.tf.points") > 0, 30)
        for step in range(61, 61 + rows):
            before = driver.execute_script("return window.tf.points")
            with (run / "metrics.jsonl").open("a") as handle:
                handle.write(json.dumps({"step": step, "kind": "train", "time": time.time(), "loss": 0.1}) + "\n")
            start = time.perf_counter()
            _until(lambda b=before: driver.execute_script("return window.tf.points") > b, 10)
            latencies.append(time.perf_counter() - start)
            time.sleep(0.3)
    finally:
        driver.quit()
    return latencies


def row_latency_in_stream(url: str, run: Path, rows: int) -> list[float]:
    latencies = []
    ident = f"{run.parent.name}/{run.name}"
    with httpx.stream("GET", url + f"api/metrics?id={ident}", timeout=60) as events:
        lines = events.iter_lines()
        next(line for line in lines if line.startswith("data:"))
        for step in range(61, 61 + rows):
            with (run / "metrics.jsonl").open("a") as handle:
                handle.write(json.dumps({"step": step, "kind": "train", "time": time.time(), "loss": 0.1}) + "\n")
            start = time.perf_counter()
            next(line for line in lines if line.startswith("data:") and f'"step": {step}' in line)
            latencies.append(time.perf_counter() - start)
    return latencies


def _until(condition, timeout: float) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError(f"waited {timeout} s")
        time.sleep(0.01)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--rows", type=int, default=20)
    args = parser.parse_args()
    flags = sorted({f for f in Path("/proc/cpuinfo").read_text().split() if f in ("avx2", "avx512f", "avx512_bf16",
                                                                               "amx_tile")}) \
        if Path("/proc/cpuinfo").exists() else []
    print(f"machine: {platform.processor() or platform.machine()}, {len(__import__('os').sched_getaffinity(0))} "
          f"cores, {' '.join(flags)}")
    with tempfile.TemporaryDirectory() as folder, contextlib.ExitStack() as stack:
        root = Path(folder) / "runs"
        runs = write_runs(root, args.runs)
        for run in runs[::5]:
            stack.enter_context(run_lock(run))  # these train: their status is read from the lock too
        server = start_ui(root, port=0, background=True)
        url = server.url.split("#")[0]
        try:
            times = time_listing(url, args.runs)
            print(f"runs page: {args.runs} runs listed in {min(times) * 1000:.0f} ms best, "
                  f"{statistics.median(times) * 1000:.0f} ms median of 5 (GET /api/runs)")
            latencies = row_latency_in_browser(url, runs[0], args.rows)
            where = "in Chromium (the chart's point)"
            if latencies is None:
                latencies, where = row_latency_in_stream(url, runs[0], args.rows), "over the event stream"
            print(f"a written metrics row shown {where}: median {statistics.median(latencies) * 1000:.0f} ms, worst "
                  f"{max(latencies) * 1000:.0f} ms of {len(latencies)}")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
