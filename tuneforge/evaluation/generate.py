"""Batched greedy (or sampled) generation with a KV cache, for evaluation and chat."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from tuneforge.data.batching import model_device


@torch.no_grad()
def sample_ids(model, tokenizer, prompts: Sequence[list[int]], *, max_new_tokens: int, stop_ids: set[int],
               temperature: float = 0.0, top_p: float = 1.0) -> list[list[int]]:
    """Left-pad the prompts and decode all at once with the KV cache (greedy at temperature 0, else sampling
    with nucleus `top_p` and no top-k); per prompt, its new tokens through the first stop token (which is
    kept, so a trained completion learns to end) or all `max_new_tokens` when none came."""
    width = max(len(p) for p in prompts)
    pad = tokenizer.pad_token_id
    input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    attention = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt):] = torch.tensor(prompt)
        attention[row, width - len(prompt):] = 1
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0} if temperature > 0 else \
        {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    device = model_device(model)
    with contiguous_head_input(model):
        output = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                                max_new_tokens=max_new_tokens, eos_token_id=sorted(stop_ids), pad_token_id=pad,
                                use_cache=True, **sampling)
    completions = []
    for row in output[:, width:].tolist():
        end = next((i for i, token in enumerate(row) if token in stop_ids), None)
        completions.append(row if end is None else row[: end + 1])
    return completions


@contextmanager
def contiguous_head_input(model) -> Iterator[None]:
    """The output head gets a contiguous input while inside. transformers hands it the prompt's last position as
    a strided view (`hidden[:, -1:, :]`), and torch's matmul then copies the head's weight once per row of the
    batch: 4.8 s in bf16 (0.26 s in fp32) for a batch of 50 and a 49152 x 576 head, against 0.013 s for the same
    product on a contiguous input (measured on this project's CPU machine, torch 2.13) — most of what a batch of
    generation cost."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        yield
        return
    handle = head.register_forward_pre_hook(lambda _, args: (args[0].contiguous(), *args[1:]))
    try:
        yield
    finally:
        handle.remove()


def generate_batch(model, tokenizer, prompts: Sequence[list[int]], *, max_new_tokens: int,
                   stop_ids: set[int], temperature: float = 0.0, top_p: float = 1.0) -> list[str]:
    """The new text of each prompt (special tokens removed)."""
    ids = sample_ids(model, tokenizer, prompts, max_new_tokens=max_new_tokens, stop_ids=stop_ids,
                     temperature=temperature, top_p=top_p)
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in ids]


def generate_all(model, tokenizer, prompts: Sequence[list[int]], *, batch_size: int, max_new_tokens: int,
                 stop_ids: set[int], temperature: float = 0.0, top_p: float = 1.0) -> list[str]:
    """Completions for every prompt (greedy at temperature 0), batched by similar length to waste little
    padding."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[str] = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        chunk = order[start: start + batch_size]
        texts = generate_batch(model, tokenizer, [prompts[i] for i in chunk], max_new_tokens=max_new_tokens,
                               stop_ids=stop_ids, temperature=temperature, top_p=top_p)
        for index, text in zip(chunk, texts, strict=True):
            results[index] = text
    return results
