"""Methods: what each trains, and that what it saves reloads to the same model."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.conftest import tiny_config
from tuneforge.api import train
from tuneforge.engine.trained import load_trained
from tuneforge.methods import REGISTRY, trainable_summary
from tuneforge.models.tiny import build_tiny_llama


def test_full_finetuning_saves_a_plain_model(tmp_path, tiny_model_dir):
    result = train(tiny_config(tmp_path, tiny_model_dir, method="full", train={"max_steps": 2, "lr": 1e-3}),
                   quiet=True)
    saved = AutoModelForCausalLM.from_pretrained(result.run_dir / "model").eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ours = load_trained(result.run_dir).model
    ids = torch.randint(0, 1000, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(ours(input_ids=ids).logits, saved(input_ids=ids).logits, atol=0, rtol=0)
        assert not torch.allclose(saved(input_ids=ids).logits, base(input_ids=ids).logits)


@pytest.mark.parametrize("name", ["lora", "full"])
def test_trainable_share(tokenizer, name):
    method = REGISTRY[name]
    model = method.apply(build_tiny_llama(tokenizer), method.params())
    trainable, total = trainable_summary(model)
    if name == "full":
        assert trainable == total
    else:
        assert 0 < trainable < total / 10
        assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
