"""Methods: what each trains, and that what it saves reloads to the same model."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.conftest import TEST_PRECISION, tiny_config
from tuneforge.api import train
from tuneforge.methods import REGISTRY, trainable_summary
from tuneforge.models.tiny import build_tiny_llama
from tuneforge.runs.evaluate import evaluate_run
from tuneforge.runs.trained import load_trained

# compares numbers from runs: `make test-bf16` runs it again with the precision forced to bf16
pytestmark = pytest.mark.numerical


def test_full_finetuning_saves_a_plain_model(tmp_path, tiny_model_dir):
    result = train(tiny_config(tmp_path, tiny_model_dir, method="full", train={"max_steps": 2, "lr": 1e-3}),
                   quiet=True)
    saved = AutoModelForCausalLM.from_pretrained(result.run_dir / "model").eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ours = load_trained(result.run_dir).model.cpu()  # on the GPU where there is one; compared on the CPU
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


# ------------------------------------------------------------------ the PEFT catalogue

CATALOGUE = {  # method config for a short tiny-model run, and the learning rate that moves it in 8 steps
    "lora": ({"name": "lora", "r": 4, "alpha": 8, "dropout": 0.0}, 1e-2),
    "dora": ({"name": "dora", "r": 4, "alpha": 8, "dropout": 0.0}, 1e-2),
    "lora-variants": ({"name": "lora", "r": 4, "alpha": 8, "dropout": 0.0, "rslora": True, "init": "pissa",
                       "loraplus_lr_ratio": 4.0}, 2e-3),
    "qlora": ({"name": "qlora", "r": 4, "alpha": 8, "dropout": 0.0}, 1e-2),
    "ia3": ({"name": "ia3"}, 5e-2),
    "prompt": ({"name": "prompt", "num_virtual_tokens": 4}, 5e-2),
    "prefix": ({"name": "prefix", "num_virtual_tokens": 4}, 2e-2),
    "ptuning": ({"name": "ptuning", "num_virtual_tokens": 4, "encoder_hidden_size": 32}, 1e-2),
    "adapter-houlsby": ({"name": "adapter", "placement": "houlsby", "reduction_factor": 4}, 1e-2),
    "adapter-pfeiffer": ({"name": "adapter", "placement": "pfeiffer", "reduction_factor": 4}, 1e-2),
    "bitfit": ({"name": "bitfit"}, 5e-2),
    "freeze": ({"name": "freeze", "last_layers": 1, "patterns": ["norm"]}, 1e-2),
    "full": ({"name": "full"}, 1e-3),
}


@pytest.mark.parametrize("case", sorted(CATALOGUE))
def test_every_method_trains_and_reloads_to_the_same_outputs(tmp_path, tiny_model_dir, case):
    method, lr = CATALOGUE[case]
    config = tiny_config(tmp_path, tiny_model_dir, train={"max_steps": 8, "lr": lr, "schedule": "constant",
                                                          "batch_size": 8},
                         eval={"metrics": ["loss"]})
    config["method"] = method
    result = train(config, quiet=True)
    losses = [json.loads(line)["loss"] for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["kind"] == "train"]
    assert min(losses[-3:]) < losses[0], losses  # it learns
    status = json.loads((result.run_dir / "run.json").read_text())
    assert 0 < status["trainable_parameters"] <= status["parameters"]
    # the saved method, loaded onto a fresh base, gives the held-out loss the trained model had in memory
    scores, _ = evaluate_run(load_trained(result.run_dir), str(tmp_path / "test.jsonl"), ["loss"])
    # p-tuning saves its encoder's output (the virtual tokens, computed once in fp32 when saved); in memory under
    # bf16 autocast the encoder recomputes them in bf16, which moves the loss by ~1e-4 (one thread, measured)
    tolerance = 1e-3 if case == "ptuning" and TEST_PRECISION == "bf16" else 1e-5
    assert scores["loss"] == pytest.approx(result.eval_after["loss"], abs=tolerance)


@pytest.mark.parametrize(("name", "params", "expected"), [
    ("bitfit", {}, lambda n: n.endswith(".bias")),
    ("freeze", {"last_layers": 1}, lambda n: ".layers.1." in n),
    ("freeze", {"patterns": ["norm"]}, lambda n: "norm" in n),
    ("adapter", {"placement": "pfeiffer"}, lambda n: ".mlp.down." in n or ".mlp.up." in n),
    ("adapter", {"placement": "houlsby"}, lambda n: any(f".{s}.{p}." in n for s in ("mlp", "self_attn")
                                                      for p in ("down", "up"))),
    ("ia3", {}, lambda n: "ia3_l" in n),
    ("prompt", {}, lambda n: "prompt_encoder" in n),
    ("dora", {}, lambda n: "lora_" in n),
])
def test_methods_train_exactly_their_parameters(tokenizer, name, params, expected):
    method = REGISTRY[name]
    model = method.apply(build_tiny_llama(tokenizer), method.params(**params))
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trained and all(expected(n) for n in trained), trained[:5]
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and not all(expected(n) for n in frozen)


@pytest.mark.parametrize("name", ["bitfit", "adapter", "lora", "ia3"])
def test_methods_start_from_the_unchanged_model(tokenizer, name):
    """Zero biases, zero up-projections, LoRA B = 0, IA3 vectors = 1: step 0 is the base model."""
    base = build_tiny_llama(tokenizer, seed=1).eval()
    ids = torch.randint(0, 1000, (2, 9))
    with torch.no_grad():
        expected = base(input_ids=ids).logits
        model = REGISTRY[name].apply(base, REGISTRY[name].params()).eval()
        torch.testing.assert_close(model(input_ids=ids).logits, expected, atol=1e-5, rtol=1e-5)


def test_loraplus_gives_b_a_larger_learning_rate(tokenizer):
    from tuneforge.config import TrainConfig
    from tuneforge.engine.optim import build_optimizer, set_lr

    method = REGISTRY["lora"]
    params = method.params(loraplus_lr_ratio=16.0)
    model = method.apply(build_tiny_llama(tokenizer), params)
    optimizer = build_optimizer(model, TrainConfig(lr=1e-3), lambda n: method.lr_scale(n, params))
    set_lr(optimizer, 1e-3)
    names = {id(p): n for n, p in model.named_parameters()}
    for group in optimizer.param_groups:
        kinds = {"B" if ".lora_B." in names[id(p)] else "A" for p in group["params"]}
        assert len(kinds) == 1
        assert group["lr"] == pytest.approx(1.6e-2 if kinds == {"B"} else 1e-3)


def test_prompt_methods_refuse_packing(tmp_path, tiny_model_dir):
    from tuneforge.errors import ConfigError

    config = tiny_config(tmp_path, tiny_model_dir, train={"packing": True})
    config["method"] = {"name": "prefix"}
    with pytest.raises(ConfigError, match=r"train\.packing"):
        train(config, quiet=True)


def test_qlora_base_is_4bit_nf4_with_double_quantization(tiny_model_dir):
    from tuneforge.config import ModelConfig
    from tuneforge.engine.precision import dtype
    from tuneforge.models.load import load_causal_lm

    method = REGISTRY["qlora"]
    params = method.params()
    base = load_causal_lm(ModelConfig(path=str(tiny_model_dir)), **method.load_base_kwargs(params, dtype("fp32")))
    linear = base.model.layers[0].mlp.down_proj
    assert type(linear).__name__ == "Linear4bit" and linear.weight.quant_state.quant_type == "nf4"
    assert linear.weight.quant_state.nested  # double quantization
    model = method.apply(base, params)
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    full = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    # the 4-bit weights count as the values they stand for
    assert trainable_summary(model)[1] == trainable_summary(full)[1] + trainable_summary(model)[0]
