"""Tiny random Llama-family models built from a config, for fast hermetic tests and examples."""

from __future__ import annotations

from pathlib import Path


def build_tiny_llama(tokenizer, *, hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                     intermediate: int = 128, seed: int = 0, tie: bool = True):
    """A randomly initialised LlamaForCausalLM sharing `tokenizer`'s vocabulary and special tokens."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=2048, tie_word_embeddings=tie, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def save_tiny_llama(directory: str | Path, tokenizer, **kwargs) -> Path:
    """Write a tiny model and its tokenizer as a Hugging Face directory usable as `model: <directory>`."""
    directory = Path(directory)
    model = build_tiny_llama(tokenizer, **kwargs)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory
