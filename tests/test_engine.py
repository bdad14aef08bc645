"""The training loop: token-normalised accumulation, reproducibility, resume equality."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import tiny_config, write_jsonl
from tuneforge.api import train
from tuneforge.config import DataConfig, DatasetSpec, TrainConfig
from tuneforge.data.batching import collate, count_label_tokens
from tuneforge.data.dataset import encode_examples, load_examples
from tuneforge.methods import REGISTRY
from tuneforge.models.load import load_causal_lm
from tuneforge.objectives import LossContext
from tuneforge.objectives.sft import sft_loss

# compares numbers from runs: `make test-bf16` runs it again with the precision forced to bf16
pytestmark = pytest.mark.numerical


def accumulated_grads(model, items, batch_size: int, accum: int) -> dict[str, torch.Tensor]:
    """Gradients after one accumulation window of `accum` micro-batches of `batch_size`."""
    model.zero_grad(set_to_none=True)
    batches = [collate(items[i * batch_size:(i + 1) * batch_size], 2) for i in range(accum)]
    ctx = LossContext(sum(count_label_tokens(b) for b in batches))
    for batch in batches:
        sft_loss(model, batch, ctx).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_accumulation_matches_one_big_batch(tmp_path, tiny_model_dir, tokenizer):
    records = [{"prompt": "word " * (1 + 3 * i % 11), "completion": "x " * (1 + i % 7)} for i in range(8)]
    path = write_jsonl(tmp_path / "d.jsonl", records)
    items, _ = encode_examples(load_examples([DatasetSpec(path=str(path))], 0), tokenizer,
                               DataConfig(train=[str(path)]))
    lengths = {len(i.encoded) for i in items}
    assert len(lengths) > 4  # variable lengths, so padding differs between the layouts
    from tuneforge.config import ModelConfig

    model = REGISTRY["lora"].apply(load_causal_lm(ModelConfig(path=str(tiny_model_dir))),
                                   REGISTRY["lora"].params(dropout=0.0))
    for name, param in model.named_parameters():  # make lora_B non-zero so every gradient is non-trivial
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.02)
    reference = accumulated_grads(model, items, 8, 1)
    for batch_size, accum in ((2, 4), (1, 8)):
        grads = accumulated_grads(model, items, batch_size, accum)
        for name, grad in grads.items():
            torch.testing.assert_close(grad, reference[name], atol=1e-5, rtol=0, msg=name)


def adapter_bytes(run_dir: Path) -> bytes:
    return (run_dir / "adapter" / "adapter_model.safetensors").read_bytes()


def run_in(tmp_path: Path, name: str, model_dir: Path, **sections):
    directory = tmp_path / name
    directory.mkdir()
    return train(tiny_config(directory, model_dir, **sections), quiet=True)


def test_same_seed_same_adapter(tmp_path, tiny_model_dir):
    first, second = run_in(tmp_path, "a", tiny_model_dir), run_in(tmp_path, "b", tiny_model_dir)
    assert adapter_bytes(first.run_dir) == adapter_bytes(second.run_dir)


def test_interrupted_run_resumes_to_identical_adapter(tmp_path, tiny_model_dir, monkeypatch):
    import tuneforge.engine.loop as loop

    sections = {"train": {"max_steps": 8, "save_every": 3, "batch_size": 3, "grad_accum": 2}}
    full = run_in(tmp_path, "full", tiny_model_dir, **sections)

    (tmp_path / "cut").mkdir()
    config = tiny_config(tmp_path / "cut", tiny_model_dir, **sections)
    real_step, calls = loop.train_step, {"n": 0}

    def crash_after_five(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt("simulated interruption")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", crash_after_five)
    with pytest.raises(KeyboardInterrupt):
        train(config, quiet=True)
    monkeypatch.setattr(loop, "train_step", real_step)
    resumed = train(config, resume=True, quiet=True)
    assert adapter_bytes(resumed.run_dir) == adapter_bytes(full.run_dir)
    losses = [r["loss"] for r in read_rows(resumed.run_dir) if r["kind"] == "train"]
    reference = [r["loss"] for r in read_rows(full.run_dir) if r["kind"] == "train"]
    assert losses == reference


def read_rows(run_dir: Path) -> list[dict]:
    from tuneforge.runs.layout import read_metrics

    return read_metrics(run_dir)


def test_checkpoint_keeps_last_k_and_writes_manifest(tmp_path, tiny_model_dir):
    result = train(tiny_config(tmp_path, tiny_model_dir, train={"max_steps": 7, "save_every": 2, "keep_last": 2}),
                   quiet=True)
    names = sorted(p.name for p in (result.run_dir / "checkpoints").iterdir())
    assert names == ["step-00000004", "step-00000006"]
    for name in names:
        files = load_file(result.run_dir / "checkpoints" / name / "trainable.safetensors")
        assert files and (result.run_dir / "checkpoints" / name / "manifest.json").is_file()


def test_lr_schedules():
    from tuneforge.engine.optim import lr_at

    cfg = TrainConfig(lr=1.0, warmup_steps=2, schedule="cosine")
    values = [lr_at(s, 10, cfg) for s in range(10)]
    assert values[0] == 0.5 and values[1] == 1.0 and values[2] == 1.0
    assert values[-1] < 0.05 and all(a >= b for a, b in itertools.pairwise(values[1:]))  # non-increasing after warmup
    linear = TrainConfig(lr=1.0, schedule="linear")
    assert [lr_at(s, 4, linear) for s in range(4)] == [1.0, 0.75, 0.5, 0.25]
    assert lr_at(3, 4, TrainConfig(lr=0.1, schedule="constant")) == 0.1


def test_early_stopping_stops_when_the_held_out_loss_stops_improving(tmp_path, tiny_model_dir, monkeypatch):
    # the evaluator's scores are scripted, so no CPU's rounding decides whether a loss rises: 1.0, then an
    # improvement (0.9), then two evaluations without one -> stop at the 4th evaluation (step 8)
    import tuneforge.engine.session as run_module

    scripted = iter([1.0, 0.9, 0.95, 0.9])

    def scores(*args, **kwargs):
        return {"loss": next(scripted, 0.5)}  # 0.5: the final evaluation after training

    monkeypatch.setattr(run_module, "heldout_scores", scores)
    result = train(tiny_config(tmp_path, tiny_model_dir, train={"max_steps": 40, "eval_every": 2,
                                                                "early_stopping_patience": 2},
                               eval={"metrics": ["loss"]}), quiet=True)
    assert result.train["stopped_early"] and result.steps == 8
    evals = [r for r in read_rows(result.run_dir) if r["kind"] == "eval"]
    assert [(r["step"], r["loss"]) for r in evals] == [(2, 1.0), (4, 0.9), (6, 0.95), (8, 0.9)]
    assert (result.run_dir / "checkpoints" / "step-00000008").is_dir()  # the state it stopped at is saved


def test_epoch_order_shuffles_by_seed_and_epoch_unless_told_not_to():
    from tuneforge.data.batching import epoch_micro_batches

    lengths = list(range(40))
    first = epoch_micro_batches(lengths, 4, seed=1, epoch=0, group_by_length=False)
    assert first == epoch_micro_batches(lengths, 4, seed=1, epoch=0, group_by_length=False)
    assert first != epoch_micro_batches(lengths, 4, seed=1, epoch=1, group_by_length=False)
    assert sorted(i for batch in first for i in batch) == lengths
    in_order = epoch_micro_batches(lengths, 4, seed=1, epoch=0, group_by_length=False, shuffle=False)
    assert in_order == [list(range(i, i + 4)) for i in range(0, 40, 4)]
    grouped = epoch_micro_batches(lengths, 4, seed=1, epoch=0, group_by_length=True)
    assert all(max(lengths[i] for i in b) - min(lengths[i] for i in b) <= 3 for b in grouped)  # similar lengths


def test_packed_run_matches_padded_run(tmp_path, tiny_model_dir):
    sections = {"train": {"max_steps": 4, "batch_size": 6, "grad_accum": 2}, "method": {"dropout": 0.0}}
    padded = run_in(tmp_path, "padded", tiny_model_dir, **sections)
    sections["train"]["packing"] = True
    packed = run_in(tmp_path, "packed", tiny_model_dir, **sections)
    losses = {name: [r["loss"] for r in read_rows(run.run_dir) if r["kind"] == "train"]
              for name, run in (("padded", padded), ("packed", packed))}
    assert losses["packed"] == pytest.approx(losses["padded"], rel=1e-5)


def test_a_strategys_penalty_joins_the_loss_once_per_step(tokenizer):
    """A regularisation term (what EWC, L2-SP or FedProx add) is a function of the model that the loop adds to
    any objective's loss once per optimizer step: the logged loss is objective + penalty, and the update
    follows the gradient of both."""
    from contextlib import nullcontext

    from tests.conftest import lora_tiny
    from tuneforge.data.formats import Example
    from tuneforge.engine.loop import LoopInputs, train_step
    from tuneforge.objectives import REGISTRY as OBJECTIVES

    examples = [Example("d.jsonl", i + 1, messages=({"role": "user", "content": f"say {i}"},
                                                    {"role": "assistant", "content": f"{i} {i}"}))
                for i in range(4)]
    items, _ = encode_examples(examples, tokenizer, DataConfig(train=["x"], cache=False))
    model = lora_tiny(tokenizer, seed=5)
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    start = {n: p.detach().clone() for n, p in named.items()}

    def penalty(m):
        return 0.5 * sum((p ** 2).sum() for p in m.parameters() if p.requires_grad)

    expected_penalty = float(penalty(model))
    grads = accumulated_grads(model, items, 2, 2)  # the objective's gradient over the window, by hand
    batches = [collate(items[i:i + 2], tokenizer.pad_token_id) for i in (0, 2)]
    ctx = LossContext(sum(count_label_tokens(b) for b in batches))
    with torch.no_grad():
        objective_loss = sum(float(sft_loss(model, b, ctx).loss) for b in batches)
    model.zero_grad(set_to_none=True)
    cfg = TrainConfig(batch_size=2, grad_accum=2, max_grad_norm=None, precision="fp32")
    inputs = LoopInputs(model, OBJECTIVES["sft"], items, cfg, tokenizer.pad_token_id, torch.device("cpu"),
                        nullcontext, None, None, Path("unused"), penalty=penalty)
    values = train_step(inputs, torch.optim.SGD(named.values(), lr=1.0), [items[0:2], items[2:4]], lr=1.0)
    assert values["penalty"] == pytest.approx(expected_penalty, rel=1e-5)
    assert values["loss"] == pytest.approx(objective_loss + expected_penalty, rel=1e-5)
    for name, param in named.items():  # SGD at lr 1: θ − (∇L + ∇P), and ∇P = θ
        torch.testing.assert_close(param.detach(), start[name] - grads[name] - start[name], atol=1e-6, rtol=1e-5)
