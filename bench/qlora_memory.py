"""Peak GPU memory of a QLoRA run: the frozen base in 4-bit NF4, LoRA r16 on every linear layer, sequences
of `--tokens` tokens, gradient checkpointing on. Needs CUDA and bitsandbytes.

    python -m bench.random_model llama3-8b /tmp/llama3-8b --tokenizer DIR
    python -m bench.qlora_memory --model /tmp/llama3-8b --tokens 2048

Prints the peak allocated memory (what limits the run; `torch.cuda.max_memory_allocated`) and the peak the
caching allocator reserved from the driver, after `--steps` optimizer steps of one sequence each.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from bench.common import WORDS


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--method", default="qlora")
    args = parser.parse_args(argv)

    import torch

    from tuneforge.api import train
    from tuneforge.runs.layout import read_metrics

    if not torch.cuda.is_available():
        raise SystemExit("bench.qlora_memory measures GPU memory: it needs CUDA")
    work = Path(tempfile.mkdtemp(prefix="tuneforge-qlora-memory-"))
    rng = random.Random(0)
    data = work / "long.jsonl"
    # a short prompt and an answer longer than the budget (one word is about one token): truncated to exactly
    # max_seq_len, nearly all of it trained
    with data.open("w") as handle:
        for _ in range(args.steps):
            words = lambda n: " ".join(rng.choice(WORDS) for _ in range(n))  # noqa: E731
            handle.write(json.dumps({"prompt": words(64), "completion": words(args.tokens * 2)}) + "\n")
    config = {
        "model": args.model, "method": {"name": args.method, "r": 16, "alpha": 32, "dropout": 0.0},
        "data": {"train": str(data), "max_seq_len": args.tokens},
        "train": {"max_steps": args.steps, "batch_size": 1, "lr": 1e-4, "gradient_checkpointing": True,
                  "precision": "bf16", "shuffle": False},
        "eval": {"metrics": []},
        "output": {"dir": str(work / "run"), "tensorboard": False, "overwrite": True},
    }
    started = time.perf_counter()
    result = train(config, quiet=True)
    rows = [r for r in read_metrics(result.run_dir) if r["kind"] == "train"]
    print(f"model {args.model}, method {args.method}, {args.tokens} tokens per step, gradient checkpointing on")
    print(f"steps: {len(rows)}, s/step: {[round(r['step_time_s'], 2) for r in rows]}, "
          f"wall {time.perf_counter() - started:.0f} s")
    print(f"peak allocated: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB; "
          f"peak reserved: {torch.cuda.max_memory_reserved() / 2**30:.2f} GiB; "
          f"device {torch.cuda.get_device_name()}")


if __name__ == "__main__":
    main()
