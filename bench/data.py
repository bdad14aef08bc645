"""Data preparation throughput: read, validate, render, tokenize and mask chat examples, then the same
data again from the encoded-data cache.

    python -m bench.data --quick     # 20,000 examples (about a minute)
    python -m bench.data             # 100,000 examples

The chat examples have realistic, varied prompt and answer lengths (`bench.common.write_chat_workload`).
The first pass runs with an empty cache (a fresh `TUNEFORGE_HOME`), the second finds the cache. For
context it also times the Rust tokenizer alone on the already-rendered texts: the floor that any
tokenizing data pipeline with this tokenizer pays on the first pass.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from bench.common import write_chat_workload


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20,000 examples instead of 100,000")
    parser.add_argument("--examples", type=int)
    args = parser.parse_args(argv)
    count = args.examples or (20_000 if args.quick else 100_000)
    work = Path(tempfile.mkdtemp(prefix="tuneforge-bench-data-"))
    os.environ["TUNEFORGE_HOME"] = str(work / "home")  # an empty cache for the first pass
    try:
        run(count, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(count: int, work: Path) -> None:
    from tuneforge.config import DataConfig, DatasetSpec, ModelConfig
    from tuneforge.data.dataset import encode_examples, load_examples
    from tuneforge.data.render import _renders
    from tuneforge.models.default import default_model_dir
    from tuneforge.models.load import load_tokenizer

    default_model_dir()
    path = write_chat_workload(work / "chat.jsonl", count, seed=0)
    tokenizer = load_tokenizer(ModelConfig(path="default"))
    cfg = DataConfig(train=[str(path)], max_seq_len=4096)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; {count:,} chat examples\n")
    for label in ("first pass (empty cache)", "second pass (cached)"):
        started = time.perf_counter()
        examples = load_examples([DatasetSpec(path=str(path))], seed=0)
        _, stats = encode_examples(examples, tokenizer, cfg)
        seconds = time.perf_counter() - started
        print(f"{label:<26} {seconds:6.1f} s  {count / seconds:8,.0f} examples/s  "
              f"({stats.summary()['tokens']:,} tokens, {stats.summary()['label_tokens']:,} trained)")
    texts = [full for full, _, _ in _renders(examples, tokenizer)]
    started = time.perf_counter()
    tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
    seconds = time.perf_counter() - started
    print(f"{'Rust tokenizer alone':<26} {seconds:6.1f} s  {count / seconds:8,.0f} examples/s  (rendered texts, "
          "no reading, rendering or masking)")


if __name__ == "__main__":
    main()
