"""Write a randomly initialised model of a named shape, for speed and memory benchmarks where the weights
cannot be downloaded (a GPU machine with no network). Speed and memory do not depend on weight values.

    python -m bench.random_model llama3-8b /tmp/llama3-8b --tokenizer DIR
    python -m bench.random_model default "$TUNEFORGE_HOME/models/smollm2-135m-instruct" --tokenizer DIR --as-default

`--tokenizer` is a directory holding the tokenizer files (the default model's tokenizer is used for every
shape: its ids all fall inside Llama-3's larger vocabulary). `--as-default` also marks the directory as a
converted default model, so `model: default` and the test suite's tokenizer fixture find it.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

# The published configurations of the shapes (Llama-3-8B's from its config.json; SmolLM2-135M's from the
# default model). Only the shape matters here.
SHAPES: dict[str, dict] = {
    "llama3-8b": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                  "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
                  "max_position_embeddings": 8192, "rope_theta": 500000.0, "rms_norm_eps": 1e-5,
                  "tie_word_embeddings": False},
    "default": {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
                "max_position_embeddings": 8192, "rope_theta": 100000.0, "rms_norm_eps": 1e-5,
                "tie_word_embeddings": True},
}


def write_random_model(shape: str, target: Path, tokenizer_dir: Path, *, as_default: bool = False) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(**SHAPES[shape], bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, dtype="bfloat16")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16 if shape != "default" else torch.float32)
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    for extra in ("chat_template.jinja", "generation_config.json"):
        if (tokenizer_dir / extra).is_file():
            shutil.copy(tokenizer_dir / extra, target / extra)
    if as_default:
        from tuneforge.models.default import COMPLETE_MARKER

        (target / COMPLETE_MARKER).write_text("random weights of the default model's shape (bench.random_model)\n")
    return target


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("shape", choices=sorted(SHAPES))
    parser.add_argument("target", type=Path)
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--as-default", action="store_true")
    args = parser.parse_args(argv)
    print(write_random_model(args.shape, args.target, args.tokenizer, as_default=args.as_default))


if __name__ == "__main__":
    main()
