"""Where the time of a tuneforge LoRA SFT step goes: torch.profiler over a few steps of the bench workload.

    python -m bench.profile_sft [--steps 3] [--batch-size 8]

Uses packed micro-batches, as the benchmark does. Prints the operators by self CPU time, and the share
of time in matrix multiplications (the part the hardware's matmul peak bounds) against everything else.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::baddbmm")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-seq-len", type=int, default=512)
    args = parser.parse_args(argv)

    from torch.profiler import ProfilerActivity, profile

    from bench.common import write_chat_workload
    from tuneforge.config import DataConfig, DatasetSpec, ModelConfig, TrainConfig
    from tuneforge.data.batching import collate_packed, count_label_tokens
    from tuneforge.data.dataset import encode_examples, load_examples
    from tuneforge.engine.optim import build_optimizer
    from tuneforge.methods import REGISTRY
    from tuneforge.models.default import default_model_dir
    from tuneforge.models.load import load_causal_lm, load_tokenizer
    from tuneforge.objectives import LossContext
    from tuneforge.objectives.sft import sft_loss

    work = Path(tempfile.mkdtemp(prefix="tuneforge-profile-"))
    data = write_chat_workload(work / "chat.jsonl", (args.steps + 1) * args.batch_size, seed=0)
    model_cfg = ModelConfig(path=str(default_model_dir()))
    tokenizer = load_tokenizer(model_cfg)
    examples, _ = encode_examples(load_examples([DatasetSpec(path=str(data))], 0), tokenizer,
                                  DataConfig(train=[str(data)], max_seq_len=args.max_seq_len))
    lora = REGISTRY["lora"]
    model = lora.apply(load_causal_lm(model_cfg), lora.params(r=16, alpha=32, dropout=0.0))
    model.train()
    optimizer = build_optimizer(model, TrainConfig())

    def step(index: int) -> None:
        batch = collate_packed(examples[index * args.batch_size:(index + 1) * args.batch_size], tokenizer.pad_token_id)
        sft_loss(model, batch, LossContext(count_label_tokens(batch))).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(0)  # warm-up, outside the profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for index in range(1, args.steps + 1):
            step(index)
    averages = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in averages)
    matmul = sum(e.self_cpu_time_total for e in averages if e.key in MATMUL_OPS)
    print(averages.table(sort_by="self_cpu_time_total", row_limit=15))
    print(f"matrix multiplications: {100 * matmul / total:.1f}% of self CPU time; everything else "
          f"{100 * (total - matmul) / total:.1f}%")


if __name__ == "__main__":
    main()
