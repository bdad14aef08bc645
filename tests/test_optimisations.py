"""Each speed lever keeps the loss and gradients of the plain path (tiny model)."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.conftest import lora_tiny
from tuneforge.data.batching import count_label_tokens
from tuneforge.engine import precision
from tuneforge.objectives import LossContext
from tuneforge.objectives.sft import sft_loss


@pytest.fixture
def lora_model(tokenizer):
    return lora_tiny(tokenizer, seed=3)


def padded_batch(lengths=(23, 9, 17), vocab=1000, seed=0):
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.randint(3, vocab, (len(lengths), width), generator=generator)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
        labels[row, n // 2:n] = ids[row, n // 2:n]  # the second half of each example is "completion"
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_label_only_head_equals_full_logits_loss(lora_model):
    batch = padded_batch()
    count = int((batch["labels"][:, 1:] != -100).sum())
    ours = sft_loss(lora_model, batch, LossContext(count)).loss
    ours.backward()
    ours_grads = grads(lora_model)
    lora_model.zero_grad(set_to_none=True)
    plain = lora_model(**batch).loss  # transformers: full logits over every position, mean over label tokens
    plain.backward()
    torch.testing.assert_close(ours, plain, atol=1e-6, rtol=1e-6)
    for name, grad in grads(lora_model).items():
        torch.testing.assert_close(ours_grads[name], grad, atol=1e-6, rtol=1e-5, msg=name)


def test_bf16_frozen_weights_stay_within_bf16_noise(lora_model):
    batch = padded_batch()
    count = int((batch["labels"][:, 1:] != -100).sum())
    reference = sft_loss(lora_model, batch, LossContext(count)).loss.item()
    fast = copy.deepcopy(lora_model)
    precision.cast_frozen_weights(fast, "bf16")
    assert all(p.dtype == torch.float32 for p in fast.parameters() if p.requires_grad)
    assert any(p.dtype == torch.bfloat16 for p in fast.parameters() if not p.requires_grad)
    with precision.autocast_factory("bf16", torch.device("cpu"))():
        value = sft_loss(fast, batch, LossContext(count)).loss.item()
    assert abs(value - reference) / reference < 0.02


def test_auto_precision_matches_the_cpu():
    expected = "bf16" if precision.cpu_has_fast_bf16() else "fp32"
    assert precision.resolve_precision("auto", torch.device("cpu")) == expected
    assert precision.resolve_precision("fp32", torch.device("cpu")) == "fp32"


def test_gradient_checkpointing_keeps_loss_and_gradients(lora_model):
    batch = padded_batch()
    count = int((batch["labels"][:, 1:] != -100).sum())
    lora_model.train()
    plain = sft_loss(lora_model, batch, LossContext(count)).loss
    plain.backward()
    reference = grads(lora_model)
    lora_model.zero_grad(set_to_none=True)
    precision.enable_gradient_checkpointing(lora_model)
    assert lora_model.base_model.model.model.gradient_checkpointing
    recomputed = sft_loss(lora_model, batch, LossContext(count)).loss
    recomputed.backward()
    torch.testing.assert_close(recomputed, plain, atol=0, rtol=0)
    for name, grad in grads(lora_model).items():
        torch.testing.assert_close(grad, reference[name], atol=1e-7, rtol=1e-6, msg=name)


@pytest.mark.parametrize("train_all_tokens", [False, True])
def test_packing_keeps_loss_and_gradients(lora_model, tokenizer, train_all_tokens):
    from tuneforge.data.batching import collate, collate_packed
    from tuneforge.data.dataset import TrainExample
    from tuneforge.data.formats import Example
    from tuneforge.data.render import encode_example

    lora_model.train()
    texts = ["short one", "a somewhat longer example of text " * 3, "mid sized text here " * 2, "x", "y z " * 9]
    examples = [
        TrainExample(i, e, encode_example(e, tokenizer, chat=True, train_on_prompt=train_all_tokens))
        for i, e in enumerate(Example("t", i, messages=({"role": "user", "content": t},
                                                        {"role": "assistant", "content": t[::-1]}))
                              for i, t in enumerate(texts))]
    padded, packed = collate(examples, tokenizer.pad_token_id), collate_packed(examples, tokenizer.pad_token_id)
    assert packed["input_ids"].numel() < padded["input_ids"].numel()  # fewer (padding) positions computed
    assert "attention_mask" not in packed
    count = count_label_tokens(padded)
    assert count_label_tokens(packed) == count
    results = []
    for batch in (padded, packed):
        lora_model.zero_grad(set_to_none=True)
        loss = sft_loss(lora_model, batch, LossContext(count)).loss
        loss.backward()
        results.append((loss.detach(), grads(lora_model)))
    torch.testing.assert_close(results[1][0], results[0][0], atol=1e-6, rtol=1e-6)
    for name, grad in results[1][1].items():
        torch.testing.assert_close(grad, results[0][1][name], atol=1e-6, rtol=1e-5, msg=name)
