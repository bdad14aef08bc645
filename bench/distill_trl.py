"""Token-level distillation throughput and loss: tuneforge's `kd` against TRL's GKDTrainer, side by side.

    python -m bench.distill_trl --quick --precision fp32    # loss parity: per-step losses on identical batches
    python -m bench.distill_trl --quick                     # speed in the machine's precision

Both train the same LoRA (r 16, alpha 32, all linear layers, no dropout) on the 10-layer student that
`python -m bench.distill` makes (any model directory with --model), distilling from the default model (all 30
layers) with the generalised JSD at beta 0.5 and temperature 1, no SFT term (tuneforge: alpha 1) and off-policy
(TRL: lmbda 0, seq_kd off), the same pre-tokenized chat examples in the same order and batches, AdamW at a
constant learning rate, the same seed. TRL's GKDTrainer computes both models' logits over every position and the
whole vocabulary; tuneforge computes them only at the trained positions.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench.common import (
    SystemResult,
    median,
    peak_memory_gib,
    peak_rss_bytes,
    peer_main,
    peer_parser,
    peft_lora_model,
    print_machine_and_header,
    run_side_by_side,
    save_result,
    steady,
    trl_step_timer,
    tuneforge_config,
    tuneforge_result,
    write_chat_workload,
)
from bench.sft import LORA, encoded_examples

SYSTEMS = ("tuneforge", "trl")
FULL_STEPS = 16
BETA = 0.5
STUDENT = Path(__file__).parent / "results" / "distill" / "student-10"


def parse_args(argv=None) -> argparse.Namespace:
    parser = peer_parser(__doc__, SYSTEMS, full_steps=FULL_STEPS, batch_size=4)
    parser.set_defaults(model=str(STUDENT), max_seq_len=256)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    peer_main(parse_args(argv), WORKERS, FULL_STEPS, run_all, report)


def run_all(args: argparse.Namespace, steps: int) -> dict:
    from tuneforge.models.default import default_model_dir

    return run_side_by_side("bench.distill_trl", args, steps, write_chat_workload, batch_shapes, lora=LORA,
                            teacher=str(default_model_dir()))


def batch_shapes(spec: dict) -> list[dict]:
    examples, _ = encoded_examples(spec)
    size = spec["batch_size"]
    shapes = []
    for step in range(spec["steps"]):
        batch = examples[step * size:(step + 1) * size]
        lengths = [len(e.encoded.input_ids) for e in batch]
        shapes.append({"tokens": sum(lengths), "label_tokens": sum(e.num_label_tokens for e in batch),
                       "padded_tokens": max(lengths) * len(lengths), "flops": 0.0})
    return shapes


def tuneforge_worker(spec: dict, out: Path) -> None:
    from tuneforge.api import train

    started_wall = time.time()
    config = tuneforge_config(spec, objective={"name": "kd", "teacher": spec["teacher"], "alpha": 1.0,
                                               "beta": BETA, "temperature": 1.0})
    save_result(tuneforge_result(train(config, quiet=True).run_dir, started_wall), out)


def trl_worker(spec: dict, out: Path) -> None:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    started = time.perf_counter()
    examples, tokenizer = encoded_examples(spec)
    dataset = datasets.Dataset.from_list([{"input_ids": e.encoded.input_ids, "labels": e.encoded.labels}
                                          for e in examples])
    dtype = torch.bfloat16 if spec["precision"] == "bf16" else torch.float32
    teacher = AutoModelForCausalLM.from_pretrained(spec["teacher"], dtype=dtype)
    model = peft_lora_model(spec)
    timer = trl_step_timer(started)

    def collate(rows: list[dict]) -> dict:
        """tuneforge's tokens, right-padded (TRL's ChatML collator would tokenize the messages again)."""
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), tokenizer.pad_token_id)
        labels = torch.full((len(rows), width), -100)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(row["input_ids"]), torch.tensor(row["labels"]), 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    args = GKDConfig(
        output_dir=str(Path(spec["work"]) / "trl-run"), per_device_train_batch_size=spec["batch_size"],
        gradient_accumulation_steps=1, learning_rate=spec["lr"], lr_scheduler_type="constant", warmup_steps=0,
        max_steps=spec["steps"], weight_decay=0.0, max_grad_norm=1.0, logging_steps=1, save_strategy="no",
        report_to=[], seed=spec["seed"], train_sampling_strategy="sequential", max_length=spec["max_seq_len"],
        bf16=spec["precision"] == "bf16", use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0,
        disable_tqdm=True, activation_checkpointing=False, lmbda=0.0, beta=BETA, temperature=1.0, seq_kd=False)
    trainer = GKDTrainer(model=model, teacher_model=teacher, args=args, train_dataset=dataset,
                         processing_class=tokenizer, data_collator=collate, callbacks=[timer])
    trainer.train()
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    save_result(SystemResult("trl", True, step_times=timer.times, losses=losses, peak_rss_bytes=peak_rss_bytes(),
                             peak_memory_gib=peak_memory_gib(),
                             startup_s=timer.first_step[0] if timer.first_step else 0.0,
                             extra={"trl": __import__("trl").__version__}), out)


WORKERS = {"tuneforge": tuneforge_worker, "trl": trl_worker}


def report(run: dict, args: argparse.Namespace, steps: int) -> None:
    spec, batches = run["spec"], run["batches"]
    real = sum(b["tokens"] for b in batches)
    workload = (f"student {Path(spec['model']).name} (LoRA r{LORA['r']} all-linear) distilled from the default "
                f"model, generalised JSD beta {BETA}, T 1, {steps} steps x {spec['batch_size']}, {real} tokens, "
                f"medians exclude {args.warmup} warm-up steps")
    header = f"{'system':<10} {'tok/s':>8} {'s/step':>8} {'peak mem':>9} {'final loss':>11} {'startup':>8}"
    print_machine_and_header(spec, run["peak_flops"], workload, header)
    figures = {}
    for system, result in run["results"].items():
        if not result.ok:
            print(f"{system:<10} failed: {result.error}")
            continue
        step_s = median(steady(result.step_times, args.warmup))
        figures[system] = {"tokens_per_s": real / len(batches) / step_s, "step_s": step_s,
                           "losses": result.losses, "peak_memory_gib": result.peak_memory_gib}
        print(f"{system:<10} {figures[system]['tokens_per_s']:8.1f} {step_s:8.2f} {result.peak_memory_gib:8.2f}G "
              f"{result.losses[-1]:11.5f} {result.startup_s:7.1f}s")
    if "tuneforge" in figures and "trl" in figures:
        ours, theirs = figures["tuneforge"], figures["trl"]
        gaps = [abs(a - b) / max(abs(b), 1e-12) for a, b in zip(ours["losses"], theirs["losses"], strict=False)]
        print(f"\nper-step loss differs by at most {100 * max(gaps):.3f}% (relative) on identical batches "
              f"(first step {ours['losses'][0]:.6f} vs {theirs['losses'][0]:.6f})")
        print(f"speed ratio tuneforge/TRL (tokens/s): {ours['tokens_per_s'] / theirs['tokens_per_s']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"spec": spec, "figures": figures}, indent=2))


if __name__ == "__main__":
    main()
