"""How faithful is log π − log π_ref in bf16? The probe from issue 13, on any model.

    python -m bench.bf16_ratio                 # the default model, about a minute on 2 CPU cores
    python -m bench.bf16_ratio --model DIR

A peft LoRA (r 16, alpha 32, every linear layer) whose B matrices are drawn N(0, σ²) (generator seed 1), one
sequence ("The quick brown fox jumps over the lazy dog. " × 6), and the log-probability of its tokens summed,
adapter on minus adapter off, computed four ways: fp32 weights and compute; bf16 frozen weights under bf16
autocast (what TRL and most trainers do); tuneforge's bf16 for reference-based objectives (bf16 weights, fp32
compute: `precision.WidenedWeights`); and fp32 weights under autocast. The last column is tuneforge's error
relative to fp32: what the bf16 weights alone cost.
"""

from __future__ import annotations

import argparse
from contextlib import nullcontext

SIGMAS = (2e-4, 2e-3, 2e-2)
TEXT = "The quick brown fox jumps over the lazy dog. " * 6


def lora_probe_model(model_dir: str, sigma: float, seed: int = 1):
    """The probe's model: the base in fp32 with a LoRA on every linear layer whose B is N(0, σ²)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
                           LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", lora_dropout=0.0))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * sigma)
    return model.eval()


def log_ratio(model, ids, context) -> float:
    """Σ over the sequence's tokens of log π − log π_ref (the adapter on, then off), under `context`."""
    import torch

    def summed() -> torch.Tensor:
        with torch.no_grad(), context():
            logits = model(input_ids=ids).logits[0, :-1].float()
        return torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None]).sum()

    policy = summed()
    with model.disable_adapter():
        reference = summed()
    return float(policy - reference)


def probe(model_dir: str, sigma: float, ids) -> dict[str, float]:
    import torch

    from tuneforge.engine import precision

    cpu = torch.device("cpu")
    model = lora_probe_model(model_dir, sigma)
    row = {"fp32": log_ratio(model, ids, nullcontext),
           "fp32 weights, bf16 autocast": log_ratio(model, ids, precision.autocast_factory("bf16", cpu))}
    precision.cast_frozen_weights(model, "bf16")
    row["bf16 autocast"] = log_ratio(model, ids, precision.autocast_factory("bf16", cpu))
    row["tuneforge bf16"] = log_ratio(model, ids, precision.autocast_factory("bf16", cpu, exact_ratios=True))
    return row


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default", help="a Hugging Face model directory, or 'default'")
    args = parser.parse_args(argv)
    from transformers import AutoTokenizer

    from bench.common import machine_line
    from tuneforge.models.default import default_model_dir

    model_dir = str(default_model_dir()) if args.model == "default" else args.model
    ids = AutoTokenizer.from_pretrained(model_dir)(TEXT, return_tensors="pt")["input_ids"]
    print(machine_line())
    print(f"model {args.model}; {ids.shape[1]} tokens; log π − log π_ref summed over the sequence\n")
    header = ("σ of lora_B", "fp32", "bf16 autocast", "fp32 weights, bf16 autocast", "tuneforge bf16", "error")
    print("  ".join(f"{h:>27}" if i == 3 else f"{h:>14}" for i, h in enumerate(header)))
    for sigma in SIGMAS:
        row = probe(model_dir, sigma, ids)
        error = (row["tuneforge bf16"] - row["fp32"]) / abs(row["fp32"])
        print(f"{sigma:>14.0e}  {row['fp32']:>+14.4f}  {row['bf16 autocast']:>+14.4f}  "
              f"{row['fp32 weights, bf16 autocast']:>+27.4f}  {row['tuneforge bf16']:>+14.4f}  {error:>+14.1%}",
              flush=True)


if __name__ == "__main__":
    main()
