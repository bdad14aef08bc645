"""LoRA SFT throughput: tuneforge against TRL's SFTTrainer + peft, side by side in one command.

    python -m bench.sft --quick          # under 10 minutes on 2 CPU cores
    python -m bench.sft                  # the default workload

Both systems train the default model with the same LoRA (r 16, alpha 32, all linear layers, no dropout),
the same tokens in the same order (tuneforge's encoding of one chat dataset, fed to TRL pre-tokenized,
batches taken in dataset order by both), batch size, learning rate, constant schedule, seed, steps and
precision. TRL runs with what its documentation gives as its fastest setting on this hardware: padded
batches with completion-only loss (its packing and padding-free modes are correct only with
FlashAttention, which a CPU does not have), bf16 only where the hardware has fast bf16, and gradient
checkpointing off (TRL's default is on, which trades speed for memory; `--checkpointing` turns it on in
both systems for a memory comparison).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench.common import (
    ModelShape,
    SystemResult,
    lora_step_flops,
    median,
    peak_memory_gib,
    peak_rss_bytes,
    peer_main,
    peer_parser,
    peft_lora_model,
    print_machine_and_header,
    print_system_rows,
    run_side_by_side,
    save_result,
    steady,
    trl_step_timer,
    tuneforge_config,
    tuneforge_result,
    write_chat_workload,
)

LORA = {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"}
SYSTEMS = ("tuneforge", "trl", "trl-liger")
FULL_STEPS = 20


def parse_args(argv=None) -> argparse.Namespace:
    parser = peer_parser(__doc__, SYSTEMS, full_steps=FULL_STEPS, batch_size=8,
                         default_systems=SYSTEMS if _cuda() else ("tuneforge", "trl"))
    parser.add_argument("--checkpointing", action="store_true",
                        help="gradient checkpointing in both systems (a memory comparison; off is the fastest setting "
                             "for both, and TRL's own default, on, is overridden to match)")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    peer_main(parse_args(argv), WORKERS, FULL_STEPS, run_all, report)


def run_all(args: argparse.Namespace, steps: int) -> dict:
    return run_side_by_side("bench.sft", args, steps, write_chat_workload, batch_shapes, lora=LORA,
                            checkpointing=args.checkpointing)


def batch_shapes(spec: dict) -> list[dict]:
    """Per step: tokens, label tokens and useful FLOPs (the batches are identical for every system)."""
    from transformers import AutoConfig

    examples, _ = encoded_examples(spec)
    shape = ModelShape.of(AutoConfig.from_pretrained(spec["model"]))
    size, shapes = spec["batch_size"], []
    for step in range(spec["steps"]):
        batch = examples[step * size:(step + 1) * size]
        lengths = [len(e.encoded) for e in batch]
        labels = sum(e.num_label_tokens for e in batch)
        shapes.append({"tokens": sum(lengths), "padded_tokens": max(lengths) * len(lengths), "label_tokens": labels,
                       "flops": lora_step_flops(shape, spec["lora"]["r"], lengths, labels)})
    return shapes


def encoded_examples(spec: dict):
    from tuneforge.config import DataConfig, DatasetSpec, ModelConfig
    from tuneforge.data.dataset import encode_examples, load_examples
    from tuneforge.models.load import load_tokenizer

    tokenizer = load_tokenizer(ModelConfig(path=spec["model"]))
    cfg = DataConfig(train=[spec["data"]], max_seq_len=spec["max_seq_len"])
    examples, _ = encode_examples(load_examples([DatasetSpec(path=spec["data"])], spec["seed"]), tokenizer, cfg)
    return examples, tokenizer


def tuneforge_worker(spec: dict, out: Path) -> None:
    from tuneforge.api import train

    started_wall = time.time()
    config = tuneforge_config(spec, checkpointing=spec["checkpointing"])
    result = train(config, quiet=True)
    save_result(tuneforge_result(result.run_dir, started_wall, peak_memory_gib="peak_memory_gib"), out)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def trl_liger_worker(spec: dict, out: Path) -> None:
    """TRL with Liger's Triton kernels (fused RMSNorm, RoPE, SwiGLU and linear cross-entropy): CUDA only."""
    trl_worker(spec, out, liger=True)


def trl_worker(spec: dict, out: Path, liger: bool = False) -> None:
    import datasets
    import torch
    from trl import SFTConfig, SFTTrainer

    started = time.perf_counter()
    examples, tokenizer = encoded_examples(spec)
    dataset = datasets.Dataset.from_list([{"input_ids": e.encoded.input_ids, "labels": e.encoded.labels}
                                          for e in examples])
    model = peft_lora_model(spec)
    timer = trl_step_timer(started)

    args = SFTConfig(
        output_dir=str(Path(spec["work"]) / "trl-run"), per_device_train_batch_size=spec["batch_size"],
        gradient_accumulation_steps=1, learning_rate=spec["lr"], lr_scheduler_type="constant", warmup_steps=0,
        max_steps=spec["steps"], weight_decay=0.0, max_grad_norm=1.0, logging_steps=1, save_strategy="no",
        report_to=[], seed=spec["seed"], train_sampling_strategy="sequential",
        max_length=None if torch.cuda.is_available() else spec["max_seq_len"], completion_only_loss=True,
        packing=False, bf16=spec["precision"] == "bf16",
        # On a GPU TRL's fastest is padding-free: the batch is one row with position ids restarting per
        # example (pre-truncated data, so no max_length); transformers 5 builds the block-diagonal mask from
        # them for SDPA as it does for tuneforge. On a CPU its documented setting is padded batches.
        padding_free=torch.cuda.is_available(), use_liger_kernel=liger,
        use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0, disable_tqdm=True,
        # TRL turns gradient checkpointing on by default; its fastest setting is off
        activation_checkpointing=spec["checkpointing"])
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         callbacks=[timer])
    trainer.train()
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    save_result(SystemResult("trl-liger" if liger else "trl", True, step_times=timer.times, losses=losses,
                             peak_rss_bytes=peak_rss_bytes(), peak_memory_gib=peak_memory_gib(),
                             startup_s=timer.first_step[0] if timer.first_step else 0.0,
                             extra={"trl": __import__("trl").__version__, "peak_memory_gib": timer.memory}), out)


WORKERS = {"tuneforge": tuneforge_worker, "trl": trl_worker, "trl-liger": trl_liger_worker}


def report(run: dict, args: argparse.Namespace, steps: int) -> None:
    spec, batches, peak = run["spec"], run["batches"], run["peak_flops"]
    padded = sum(b["padded_tokens"] for b in batches)
    real = sum(b["tokens"] for b in batches)
    workload = (f"{model_name(spec)}, LoRA r{LORA['r']} all-linear, gradient checkpointing "
                f"{'on' if spec['checkpointing'] else 'off'} in both, {steps} steps x batch {spec['batch_size']}, "
                f"{real} tokens ({100 * (1 - real / padded):.0f}% of a padded batch is padding), "
                f"medians exclude {args.warmup} warm-up steps")
    header = f"{'system':<10} {'tok/s':>8} {'label tok/s':>12} {'s/step':>8} {'MFU':>6} {'peak mem':>9} " \
             f"{'final loss':>11} {'startup':>8}"
    print_machine_and_header(spec, peak, workload, header)
    figures = print_system_rows(run["results"], lambda result: summarise(result, batches, peak, args.warmup),
                                lambda row: f"{row['tokens_per_s']:8.1f} {row['label_tokens_per_s']:12.1f} "
                                            f"{row['step_s']:8.2f}")
    for peer in ("trl", "trl-liger"):
        if "tuneforge" in figures and peer in figures:
            ours, theirs = figures["tuneforge"], figures[peer]
            gap = abs(ours["final_loss"] - theirs["final_loss"]) / max(abs(theirs["final_loss"]), 1e-12)
            print(f"\n{peer}: final loss differs by {100 * gap:.3f}% on identical batches")
            print(f"speed ratio tuneforge/{peer}: {ours['tokens_per_s'] / theirs['tokens_per_s']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"spec": spec, "peak_flops": peak, "figures": figures}, indent=2))


def model_name(spec: dict) -> str:
    """'default model', or the benchmarked model directory's name (e.g. a random-weight llama3-8b)."""
    from tuneforge.models.default import cached_dir

    return "default model" if Path(spec["model"]) == cached_dir() else Path(spec["model"]).name


def summarise(result: SystemResult, batches: list[dict], peak: float, warmup: int) -> dict:
    times = result.step_times
    steady_steps = list(range(len(times)))[warmup:] or list(range(len(times)))
    per_step = lambda key: median([batches[i][key] / times[i] for i in steady_steps])  # noqa: E731
    return {"tokens_per_s": per_step("tokens"), "label_tokens_per_s": per_step("label_tokens"),
            "step_s": median(steady(times, warmup)), "mfu": per_step("flops") / peak,
            "peak_rss_gib": result.peak_rss_bytes / 2**30, "peak_memory_gib": result.peak_memory_gib,
            "final_loss": result.losses[-1],
            "losses": result.losses, "startup_s": result.startup_s}


if __name__ == "__main__":
    main()
