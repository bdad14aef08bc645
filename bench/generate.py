"""Batched sampling throughput: what online RL (GRPO, RLOO, PPO) spends most of its time on.

    python -m bench.generate --quick     # about 3 minutes on 2 CPU cores
    python -m bench.generate

Samples completions (temperature 1, top-p 1) for chat prompts of varied length from the default model
with tuneforge's sampler (`tuneforge.evaluation.generate.generate_all`: left-padded batches of prompts of
similar length, KV cache, the LM head at the last position only), at several batch sizes, against the
same model sampling one prompt at a time — the loop a hand-written rollout script runs. Every
configuration generates exactly `--new-tokens` tokens per prompt (no early stop), so the token counts are
equal and tokens/s compare directly. TRL's GRPOTrainer without vLLM samples with the same transformers
`generate` call, batched, so its rollout speed is the batched row's.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

from bench.common import write_chat_workload


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer prompts and tokens (about 3 minutes on 2 cores)")
    parser.add_argument("--prompts", type=int, help="prompts to complete (default 64, quick 32)")
    parser.add_argument("--new-tokens", type=int, help="tokens generated per prompt (default 64, quick 32)")
    parser.add_argument("--batch-sizes", default="1,8,32", help="comma-separated; 1 is the one-at-a-time baseline")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    import torch

    from tuneforge.config import DatasetSpec, ModelConfig
    from tuneforge.data.dataset import load_examples
    from tuneforge.data.render import prompt_ids_for_generation
    from tuneforge.evaluation.generate import generate_all
    from tuneforge.models.load import load_causal_lm, load_tokenizer

    args = parse_args(argv)
    count = args.prompts or (32 if args.quick else 64)
    new_tokens = args.new_tokens or (32 if args.quick else 64)
    data = write_chat_workload(Path(tempfile.mkdtemp(prefix="tuneforge-bench-")) / "chat.jsonl", count, args.seed)
    tokenizer = load_tokenizer(ModelConfig(path="default"))
    model = load_causal_lm(ModelConfig(path="default")).eval()
    prompts = [prompt_ids_for_generation(e, tokenizer, chat=True)[0]
               for e in load_examples([DatasetSpec(path=str(data))], args.seed)]
    lengths = sorted(len(p) for p in prompts)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, fp32")
    print(f"workload: default model, {count} chat prompts of {lengths[0]}-{lengths[-1]} tokens "
          f"(median {lengths[len(lengths) // 2]}), {new_tokens} sampled tokens each, temperature 1.0\n")
    header = f"{'batch':>5} {'tok/s':>8} {'s total':>8} {'vs batch 1':>11}"
    print(header)
    print("-" * len(header))
    baseline = None
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        torch.manual_seed(args.seed)
        started = time.perf_counter()
        generate_all(model, tokenizer, prompts, batch_size=batch_size, max_new_tokens=new_tokens, stop_ids=set(),
                     temperature=1.0, top_p=1.0)
        seconds = time.perf_counter() - started
        rate = count * new_tokens / seconds
        baseline = baseline or rate
        print(f"{batch_size:>5} {rate:8.1f} {seconds:8.1f} {rate / baseline:10.2f}x")


if __name__ == "__main__":
    main()
