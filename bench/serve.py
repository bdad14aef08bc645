"""`tuneforge serve` under concurrent clients: the official `openai` client asks one question alone, then 8 different
questions at once from 8 threads, with the server batching them (--max-batch 8) and not (--max-batch 1). Each figure
is the median of `--repeats` rounds, greedy, `--max-tokens` tokens at most.

    python -m bench.serve                  # on runs/quickstart (make demo), or a 5-step quickstart run made first
    python -m bench.serve --run DIR

The issue's bar: 8 concurrent requests answered in less than 3x the time of one."""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

from bench.common import machine_line

ROOT = Path(__file__).parents[1]
DAYS = ["3rd of May, 2021", "14th of July, 1999", "1st of January, 2000", "22nd of August, 2015",
        "9th of March, 1987", "30th of November, 2024", "5th of June, 2010", "17th of October, 1962"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=None, help="a finished run (default: runs/quickstart)")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv if argv is not None else sys.argv[1:])
    import tuneforge.api as tf

    print(machine_line())
    run = args.run or ROOT / "runs" / "quickstart"
    if not (run / "run.json").is_file():
        run = tf.train(ROOT / "examples" / "quickstart.yaml", ["train.max_steps=5", "eval.max_examples=4",
                                                              "output.dir=bench/results/serve/run",
                                                              "output.overwrite=true"], quiet=True).run_dir
    rows = []
    for batch in (8, 1):
        server = tf.serve(run, port=0, max_batch=batch, background=True)
        try:
            rows.append((batch, *measure(server.url, run.name, args)))
        finally:
            server.stop()
    print(f"\nrun {run}, {args.max_tokens} tokens at most, greedy; medians of {args.repeats} rounds\n")
    print("| --max-batch | one request | 8 concurrent requests | ratio |\n|---|---|---|---|")
    for batch, one, eight in rows:
        print(f"| {batch} | {one:.2f} s | {eight:.2f} s | {eight / one:.2f}x |")


def measure(url: str, model: str, args) -> tuple[float, float]:
    from openai import OpenAI

    client = OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=600)

    def ask(day: str) -> None:
        client.chat.completions.create(model=model, temperature=0, max_tokens=args.max_tokens, messages=[
            {"role": "user", "content": f"Convert to ISO date (YYYY-MM-DD): the {day}"}])

    ask(DAYS[0])  # warm-up
    ones, eights = [], []
    for _ in range(args.repeats):
        started = time.perf_counter()
        ask(DAYS[0])
        ones.append(time.perf_counter() - started)
        threads = [threading.Thread(target=ask, args=(day,)) for day in DAYS]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        eights.append(time.perf_counter() - started)
    return statistics.median(ones), statistics.median(eights)


if __name__ == "__main__":
    main()
