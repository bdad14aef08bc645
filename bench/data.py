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
    peers(path, tokenizer, count)


def peers(path: Path, tokenizer, count: int) -> None:
    """The peers' preparation of the same file with the same tokenizer, from the JSON Lines file to token ids:
    `datasets.map` over the chat template (what a hand-written pipeline does) and TRL's `SFTTrainer` dataset
    preparation. Neither masks the prompt here (the template has no generation markers for TRL's
    assistant_only_loss), so each does less than tuneforge's first pass, which also places the label masks."""
    import datasets

    datasets.disable_caching()  # every pass tokenizes, as a first pass does
    datasets.disable_progress_bars()

    def load():
        return datasets.load_dataset("json", data_files=str(path), split="train")

    def tokenized(batch):
        return {"input_ids": tokenizer.apply_chat_template(batch["messages"], tokenize=True, return_dict=False)}

    started = time.perf_counter()
    load().map(tokenized, batched=True, num_proc=os.cpu_count(), remove_columns=["messages"])
    _said("datasets.map", time.perf_counter() - started, count, "load_dataset + chat template tokenized, no masks")
    try:
        from types import SimpleNamespace

        from trl import SFTConfig, SFTTrainer
    except ImportError:
        print("TRL: not installed (pip install tuneforge[bench])")
        return
    config = SFTConfig(output_dir=str(path.parent / "trl"), dataset_num_proc=os.cpu_count(), max_length=4096,
                       report_to=[], use_cpu=True, bf16=False)
    trainer = SimpleNamespace(_tokenizer=tokenizer, chat_template=None, completion_only_loss=False)
    started = time.perf_counter()
    SFTTrainer._prepare_dataset(trainer, load(), tokenizer, config, False, None, "train")
    _said("TRL SFTTrainer", time.perf_counter() - started, count, "load_dataset + its dataset preparation, no masks")


def _said(label: str, seconds: float, count: int, what: str) -> None:
    print(f"{label:<26} {seconds:6.1f} s  {count / seconds:8,.0f} examples/s  ({what})")


if __name__ == "__main__":
    main()
