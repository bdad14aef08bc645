"""Exact match by teacher forcing: whether greedy decoding would write an example's trained tokens (its answer and
the end-of-turn token) exactly, read off one forward pass instead of a decoding loop. Greedy decoding reproduces the
reference iff at every trained position the reference token is the most likely next token given the reference
before it; at the first position where it is not, greedy decoding leaves the reference. (A different tokenization
of the same text would also match as text; such a decode is counted wrong here, so the figure is a lower bound of
greedy generation's exact match, equal to it whenever the model writes the reference's own tokens.)

Examples that share a long token prefix before any trained token (in-context prompts: the same k shots before
each question) have it computed once: its keys and values are cached and every batch reads them, so a question
costs its own tokens, not the k examples' again."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext

import torch

from tuneforge.config import IGNORE_INDEX
from tuneforge.data.batching import collate, model_device, to_device
from tuneforge.data.dataset import TrainExample
from tuneforge.models.parts import label_logits, output_head

SHARED_PREFIX = 64  # tokens: a shorter shared prefix is recomputed per example (caching it would not pay)


def forced_exact_match(model: torch.nn.Module, examples: Sequence[TrainExample], pad_id: int, *, batch_size: int = 16,
                       autocast: Callable[[], AbstractContextManager] = nullcontext) -> list[bool]:
    """Per example, whether every trained token is the model's argmax given the reference before it."""
    hits: list[bool] = []
    device, training = model_device(model), model.training
    model.eval()
    try:
        with torch.no_grad(), autocast():
            length = _shared_prefix(model, examples)
            prefix = (model(input_ids=torch.tensor([examples[0].encoded.input_ids[:length]], device=device),
                            use_cache=True)[_cache_name(model)] if length else None)
            for start in range(0, len(examples), batch_size):
                batch = to_device(collate(list(examples[start:start + batch_size]), pad_id), device)
                logits, targets, trained = (label_logits(model, batch) if prefix is None
                                            else _after_prefix(model, batch, prefix, length))
                right = torch.ones_like(trained)
                right[trained] = logits.argmax(-1) == targets
                hits += right.all(dim=1).tolist()
    finally:
        model.train(training)
    return hits


def _shared_prefix(model, examples: Sequence[TrainExample]) -> int:
    """How many leading tokens every example shares before the position that predicts its first trained token (0 if
    fewer than SHARED_PREFIX, or for prompt-learning methods, whose virtual tokens come first)."""
    config = getattr(model, "active_peft_config", None)
    if len(examples) < 2 or getattr(config, "is_prompt_learning", False):
        return 0
    first = examples[0].encoded.input_ids
    length = min(next(i for i, label in enumerate(e.encoded.labels) if label != IGNORE_INDEX) - 1 for e in examples)
    for example in examples[1:]:
        ids = example.encoded.input_ids
        length = next((i for i in range(min(length, len(ids))) if ids[i] != first[i]), min(length, len(ids)))
    return length if length >= SHARED_PREFIX else 0


def _after_prefix(model, batch: dict[str, torch.Tensor], prefix, length: int) -> tuple[torch.Tensor, ...]:
    """label_logits of a batch whose first `length` tokens are the cached prefix: only the rest is computed."""
    cache = copy.deepcopy(prefix)
    cache.batch_repeat_interleave(batch["input_ids"].shape[0])
    ids = batch["input_ids"][:, length:]
    positions = torch.arange(length, batch["input_ids"].shape[1], device=ids.device).expand(ids.shape[0], -1)
    out = model(input_ids=ids, attention_mask=batch["attention_mask"], position_ids=positions,
                output_hidden_states=True, logits_to_keep=1, use_cache=True, **{_cache_name(model): cache})
    targets = batch["labels"][:, length + 1:]
    trained = targets != IGNORE_INDEX
    logits = output_head(model)(out.hidden_states[-1][:, :-1][trained]).float()
    return logits, targets[trained], trained


def _cache_name(model) -> str:
    """The KV cache's argument and output name: `cache` from transformers 5.2x, `past_key_values` before."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
