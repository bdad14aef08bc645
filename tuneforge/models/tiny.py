"""Tiny random Llama-family models built from a config, for fast hermetic tests and examples."""

from __future__ import annotations

from pathlib import Path


def build_tiny_llama(tokenizer, *, hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                     intermediate: int = 128, seed: int = 0, tie: bool = True, rope_theta: float = 10000.0):
    """A randomly initialised LlamaForCausalLM sharing `tokenizer`'s vocabulary and special tokens."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=2048, tie_word_embeddings=tie, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, rope_theta=rope_theta,
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


def save_tiny_bert(directory: str | Path, tokenizer, *, hidden: int = 32, layers: int = 2, heads: int = 2,
                   intermediate: int = 64, seed: int = 0, init: float = 0.3) -> Path:
    """A randomly initialised BERT encoder (BertModel, as a sentence encoder is published) sharing `tokenizer`'s
    vocabulary, written with the tokenizer as a Hugging Face directory usable as `model: <directory>`. Its
    weights are drawn wider than BERT's 0.02, so that its [CLS] state differs between texts the way a trained
    encoder's does (at 0.02 a tiny random BERT gives every text nearly the same one); no dropout, which at this size
    only slows learning down."""
    import torch
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=intermediate, max_position_embeddings=128,
                        pad_token_id=tokenizer.pad_token_id, initializer_range=init, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    torch.manual_seed(seed)
    directory = Path(directory)
    BertModel(config).save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory
