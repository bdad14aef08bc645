"""Where the time of a tuneforge LoRA SFT step goes: torch.profiler over a few steps of the bench workload.

    python -m bench.profile_sft [--steps 3] [--batch-size 8] [--model DIR]

Uses packed micro-batches, as the benchmark does, in the precision `auto` gives on this machine (bf16 on a
GPU). Prints the operators by self time (CPU time on a CPU, GPU kernel time on a GPU), and the share of
time in matrix multiplications (the part the hardware's matmul peak bounds) against everything else.
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
    parser.add_argument("--model", default="default", help="a Hugging Face model directory (default: default model)")
    args = parser.parse_args(argv)

    import torch
    from torch.profiler import ProfilerActivity, profile

    from bench.common import write_chat_workload
    from tuneforge.config import DataConfig, DatasetSpec, ModelConfig, TrainConfig
    from tuneforge.data.batching import collate_packed, count_label_tokens, to_device
    from tuneforge.data.dataset import encode_examples, load_examples
    from tuneforge.engine import precision
    from tuneforge.engine.optim import build_optimizer
    from tuneforge.methods import REGISTRY
    from tuneforge.models.default import default_model_dir
    from tuneforge.models.load import load_causal_lm, load_tokenizer
    from tuneforge.objectives import LossContext
    from tuneforge.objectives.sft import sft_loss

    work = Path(tempfile.mkdtemp(prefix="tuneforge-profile-"))
    data = write_chat_workload(work / "chat.jsonl", (args.steps + 1) * args.batch_size, seed=0)
    model_cfg = ModelConfig(path=str(default_model_dir()) if args.model == "default" else args.model)
    tokenizer = load_tokenizer(model_cfg)
    examples, _ = encode_examples(load_examples([DatasetSpec(path=str(data))], 0), tokenizer,
                                  DataConfig(train=[str(data)], max_seq_len=args.max_seq_len))
    lora = REGISTRY["lora"]
    device, chosen = precision.inference_placement("auto")
    model = lora.apply(load_causal_lm(model_cfg, dtype="auto" if chosen == "bf16" else None),
                       lora.params(r=16, alpha=32, dropout=0.0))
    precision.cast_frozen_weights(model, chosen)
    precision.move_to(model, device)
    autocast = precision.autocast_factory(chosen, device)
    model.train()
    optimizer = build_optimizer(model, TrainConfig())

    def step(index: int) -> None:
        batch = collate_packed(examples[index * args.batch_size:(index + 1) * args.batch_size], tokenizer.pad_token_id)
        with autocast():
            loss = sft_loss(model, to_device(batch, device), LossContext(count_label_tokens(batch))).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(0)  # warm-up, outside the profile
    cuda = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]) as prof:
        for index in range(1, args.steps + 1):
            step(index)
        if cuda:
            torch.cuda.synchronize()
    averages = prof.key_averages()
    kind = "device" if cuda else "cpu"
    self_time = lambda e: getattr(e, f"self_{kind}_time_total")  # noqa: E731
    total = sum(self_time(e) for e in averages)
    matmul = sum(self_time(e) for e in averages if e.key in MATMUL_OPS or (cuda and "gemm" in e.key.lower()))
    print(averages.table(sort_by=f"self_{kind}_time_total", row_limit=25, max_name_column_width=70))
    print(f"matrix multiplications: {100 * matmul / total:.1f}% of self {kind} time; everything else "
          f"{100 * (total - matmul) / total:.1f}%")


if __name__ == "__main__":
    main()
