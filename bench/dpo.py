"""LoRA DPO throughput: tuneforge against TRL's DPOTrainer + peft, side by side in one command.

    python -m bench.dpo --quick          # under 10 minutes on 2 CPU cores
    python -m bench.dpo

Both systems train the default model with the same LoRA (r 16, alpha 32, all linear layers, no dropout)
and the sigmoid DPO loss (beta 0.1) against the reference the same way: the adapter disabled, computed
for every batch. They see the same preference pairs, tokenized once by tuneforge and handed to TRL as
prompt/chosen/rejected ids (TRL's own tokenization is bypassed so the tokens are identical), in the same
order, with the same batch size (pairs per step), learning rate, constant schedule, seed, steps and
precision. TRL runs with its documented fastest setting for this hardware: its concatenated chosen +
rejected forward, padded (its padding-free mode is disabled in this TRL version and needs
FlashAttention), its fused LM-head log-probabilities, and gradient checkpointing off.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from bench.common import (
    ModelShape,
    SystemResult,
    lognormal_words,
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
)
from bench.sft import LORA, summarise

SYSTEMS = ("tuneforge", "trl")
FULL_STEPS = 16
BETA = 0.1


def parse_args(argv=None) -> argparse.Namespace:
    return peer_parser(__doc__, SYSTEMS, full_steps=FULL_STEPS, batch_size=4,
                       batch_help="preference pairs per step").parse_args(argv)


def write_pair_workload(path: Path, pairs: int, seed: int) -> Path:
    """Preference pairs with varied prompt and response lengths (log-normal), so padding matters."""
    rng = random.Random(seed)
    with path.open("w") as handle:
        for _ in range(pairs):
            handle.write(json.dumps({"prompt": lognormal_words(rng, 50, 5, 250),
                                     "chosen": lognormal_words(rng, 40, 3, 150),
                                     "rejected": lognormal_words(rng, 40, 3, 150)}) + "\n")
    return path


def main(argv=None) -> None:
    peer_main(parse_args(argv), WORKERS, FULL_STEPS, run_all, report)


def run_all(args: argparse.Namespace, steps: int) -> dict:
    return run_side_by_side("bench.dpo", args, steps, write_pair_workload, batch_shapes, lora=LORA)


def encoded_pairs(spec: dict):
    from tuneforge.config import DataConfig, DatasetSpec, ModelConfig
    from tuneforge.data.dataset import encode_examples, load_examples
    from tuneforge.models.load import load_tokenizer

    tokenizer = load_tokenizer(ModelConfig(path=spec["model"]))
    cfg = DataConfig(train=[spec["data"]], max_seq_len=spec["max_seq_len"])
    pairs, _ = encode_examples(load_examples([DatasetSpec(path=spec["data"])], spec["seed"]), tokenizer, cfg)
    return pairs, tokenizer


def trimmed(sequence) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids): the response ends at its last trained token (the end-of-turn marker)."""
    labelled = [i for i, label in enumerate(sequence.labels) if label != -100]
    return sequence.input_ids[:labelled[0]], sequence.input_ids[labelled[0]:labelled[-1] + 1]


def batch_shapes(spec: dict) -> list[dict]:
    """Per step: pairs, tokens, label tokens and useful FLOPs (the batches are identical for every system).

    Useful work counts each pair's prompt once, since the chosen and rejected responses condition on the
    same prompt (a system that runs it twice does redundant work, as with padding). A DPO step trains LoRA
    over those tokens (4N frozen + 6N LoRA per token, attention 12·L·H·d per attended position, the LM head
    4·d·V at labels) and runs the reference forward over them (2N, 4·L·H·d, 2·d·V).
    """
    from transformers import AutoConfig

    pairs, _ = encoded_pairs(spec)
    shape = ModelShape.of(AutoConfig.from_pretrained(spec["model"]))
    per_token = 4 * shape.body_params + 6 * shape.lora_params(spec["lora"]["r"]) + 2 * shape.body_params
    per_attended = (12 + 4) * shape.layers * shape.heads * shape.head_dim
    size, shapes = spec["batch_size"], []
    for step in range(spec["steps"]):
        batch = pairs[step * size:(step + 1) * size]
        sides = [[trimmed(s) for s in p.sequences] for p in batch]
        lengths = [len(prompt) + len(response) for pair in sides for prompt, response in pair]
        labels = sum(len(response) for pair in sides for _, response in pair)
        unique = sum(len(pair[0][0]) + len(pair[0][1]) + len(pair[1][1]) for pair in sides)
        attended = sum(len(pair[0][0]) ** 2 + sum(len(r) * (len(pair[0][0]) + len(r)) for _, r in pair)
                       for pair in sides)
        shapes.append({"pairs": len(batch), "tokens": sum(lengths), "label_tokens": labels,
                       "padded_tokens": max(lengths) * len(lengths),
                       "flops": per_token * unique + per_attended * attended + labels * 6 * shape.hidden * shape.vocab})
    return shapes


def tuneforge_worker(spec: dict, out: Path) -> None:
    from tuneforge.api import train

    started_wall = time.time()
    config = tuneforge_config(spec, objective={"name": "dpo", "beta": BETA})
    result = train(config, quiet=True)
    save_result(tuneforge_result(result.run_dir, started_wall, reward_accuracy="reward_accuracy"), out)


def trl_worker(spec: dict, out: Path) -> None:
    import datasets
    import torch
    from trl import DPOConfig, DPOTrainer

    started = time.perf_counter()
    pairs, tokenizer = encoded_pairs(spec)
    rows = []
    for pair in pairs:
        prompt, chosen = trimmed(pair.encoded)
        _, rejected = trimmed(pair.rejected)
        rows.append({"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected})
    dataset = datasets.Dataset.from_list(rows)
    model = peft_lora_model(spec)
    timer = trl_step_timer(started)

    class PreTokenized(DPOTrainer):
        """TRL's trainer on tuneforge's tokens: its own tokenization is skipped, nothing else changes."""

        def _prepare_dataset(self, dataset, *args, **kwargs):
            return dataset

    args = DPOConfig(
        output_dir=str(Path(spec["work"]) / "trl-run"), per_device_train_batch_size=spec["batch_size"],
        gradient_accumulation_steps=1, learning_rate=spec["lr"], lr_scheduler_type="constant", warmup_steps=0,
        max_steps=spec["steps"], weight_decay=0.0, max_grad_norm=1.0, logging_steps=1, save_strategy="no",
        report_to=[], seed=spec["seed"], train_sampling_strategy="sequential", max_length=spec["max_seq_len"],
        beta=BETA, loss_type=["sigmoid"], bf16=spec["precision"] == "bf16", use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0, disable_tqdm=True, activation_checkpointing=False)
    trainer = PreTokenized(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                           callbacks=[timer])
    trainer.train()
    history = [row for row in trainer.state.log_history if "loss" in row]
    save_result(SystemResult("trl", True, step_times=timer.times, losses=[row["loss"] for row in history],
                             peak_rss_bytes=peak_rss_bytes(), peak_memory_gib=peak_memory_gib(),
                             startup_s=timer.first_step[0] if timer.first_step else 0.0,
                             extra={"trl": __import__("trl").__version__,
                                    "reward_accuracy": [row.get("rewards/accuracies") for row in history]}), out)


WORKERS = {"tuneforge": tuneforge_worker, "trl": trl_worker}


def report(run: dict, args: argparse.Namespace, steps: int) -> None:
    spec, batches, peak = run["spec"], run["batches"], run["peak_flops"]
    real, padded = sum(b["tokens"] for b in batches), sum(b["padded_tokens"] for b in batches)
    workload = (f"default model, LoRA r{LORA['r']} all-linear, DPO (sigmoid, beta {BETA}), reference = adapter "
                f"disabled, {steps} steps x {spec['batch_size']} pairs, {real} tokens "
                f"({100 * (1 - real / padded):.0f}% of a padded batch is padding), medians exclude {args.warmup} "
                "warm-up steps")
    header = f"{'system':<10} {'pairs/s':>8} {'tok/s':>8} {'s/step':>8} {'MFU':>6} {'peak mem':>9} " \
             f"{'final loss':>11} {'startup':>8}"
    print_machine_and_header(spec, peak, workload, header)
    def pairs_row(result):
        row = summarise(result, batches, peak, args.warmup)
        return {**row, "pairs_per_s": spec["batch_size"] / row["step_s"]}

    figures = print_system_rows(run["results"], pairs_row, lambda row: f"{row['pairs_per_s']:8.3f} "
                                f"{row['tokens_per_s']:8.1f} {row['step_s']:8.2f}")
    if "tuneforge" in figures and "trl" in figures:
        ours, theirs = figures["tuneforge"], figures["trl"]
        gaps = [abs(a - b) for a, b in zip(ours["losses"], theirs["losses"], strict=False)]
        print(f"\nper-step loss differs by at most {max(gaps):.2e} on identical batches "
              f"(first step {ours['losses'][0]:.6f} vs {theirs['losses'][0]:.6f})")
        print(f"speed ratio tuneforge/TRL (pairs/s): {ours['pairs_per_s'] / theirs['pairs_per_s']:.2f}x")
    if "fp32_results" in run:
        print_deviation_from_fp32(run["results"], run["fp32_results"], args.warmup)
    if args.json:
        args.json.write_text(json.dumps({"spec": spec, "peak_flops": peak, "figures": figures}, indent=2))


def print_deviation_from_fp32(results: dict, fp32_results: dict, warmup: int) -> None:
    """Each system's largest per-step loss deviation in bf16 from its own fp32 run, and the fp32 runs'
    agreement with each other (the bf16 rows are only meaningful if the fp32 rows agree)."""
    print("\nper-step loss, bf16 against fp32 on the same batches (s/step: median after warm-up):")
    fp32 = {name: r for name, r in fp32_results.items() if r.ok}
    for name, result in results.items():
        if result.ok and name in fp32:
            gaps = [abs(a - b) for a, b in zip(result.losses, fp32[name].losses, strict=False)]
            print(f"  {name:<10} largest deviation {max(gaps):.4f}   bf16 "
                  f"{' '.join(f'{x:.4f}' for x in result.losses)}  {median(steady(result.step_times, warmup)):6.2f} "
                  f"s/step\n  {'':<10} {'':>25}   fp32 {' '.join(f'{x:.4f}' for x in fp32[name].losses)}  "
                  f"{median(steady(fp32[name].step_times, warmup)):6.2f} s/step")
    fp32 = {name: r.losses for name, r in fp32.items()}
    if len(fp32) > 1:
        first, *others = fp32.values()
        agreement = max(abs(a - b) for other in others for a, b in zip(first, other, strict=False))
        print(f"  the fp32 runs agree with each other to {agreement:.1e}")


if __name__ == "__main__":
    main()
