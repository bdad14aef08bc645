"""Promise 5: a NaN or inf loss never reaches the weights. Under `train.nonfinite: skip` the step is skipped
and logged with its step and samples; under `stop` the run stops with that message and the last good
checkpoint; nothing non-finite is ever saved."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import lora_tiny, tiny_config
from tuneforge.api import train
from tuneforge.config import TrainConfig
from tuneforge.engine import checkpoint
from tuneforge.engine.optim import build_optimizer
from tuneforge.errors import TrainingError
from tuneforge.objectives import REGISTRY

# compares numbers from runs: `make test-bf16` runs it again with the precision forced to bf16
pytestmark = pytest.mark.numerical


def poison_sft(monkeypatch, calls: set[int]) -> None:
    """The SFT loss, made NaN on the given calls (one call per step here: one micro-batch a step)."""
    real, count = REGISTRY["sft"].loss, {"n": 0}

    def loss(model, batch, ctx):
        out = real(model, batch, ctx)
        count["n"] += 1
        if count["n"] in calls:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setitem(REGISTRY, "sft", dataclasses.replace(REGISTRY["sft"], loss=loss))


def rows(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def weights(run_dir, step: int) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "checkpoints" / f"step-{step:08d}" / "trainable.safetensors")


def test_skip_logs_the_step_and_samples_and_keeps_the_weights(tmp_path, tiny_model_dir, monkeypatch, capsys):
    poison_sft(monkeypatch, {2})
    config = tiny_config(tmp_path, tiny_model_dir, train={"max_steps": 4, "save_every": 1, "keep_last": 4})
    result = train(config, quiet=True)
    step2 = next(r for r in rows(result.run_dir) if r["kind"] == "train" and r["step"] == 2)
    assert math.isnan(step2["loss"]) and step2["nonfinite"] and len(step2["samples"]) == 4
    assert "step 2: the loss (nan)" in capsys.readouterr().out
    assert json.loads((result.run_dir / "run.json").read_text())["train"]["skipped_steps"] == 1
    before, after = weights(result.run_dir, 1), weights(result.run_dir, 2)
    assert all(torch.equal(before[name], after[name]) for name in before)  # the skipped step changed nothing
    assert all(torch.isfinite(t).all() for t in weights(result.run_dir, 3).values())
    adapter = load_file(next((result.run_dir / "adapter").glob("*.safetensors")))
    assert all(torch.isfinite(t).all() for t in adapter.values())


def test_stop_ends_the_run_with_the_last_good_checkpoint(tmp_path, tiny_model_dir, monkeypatch):
    poison_sft(monkeypatch, {3})
    config = tiny_config(tmp_path, tiny_model_dir, train={"max_steps": 4, "save_every": 1, "keep_last": 4,
                                                          "nonfinite": "stop"})
    with pytest.raises(TrainingError, match=r"step 3: the loss \(nan\).*on samples \[") as err:
        train(config, quiet=True)
    assert "train.nonfinite: stop" in str(err.value) and "fix:" in str(err.value)
    saved = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step-*"))
    assert saved == ["step-00000001", "step-00000002"]
    # the run says how it ended (issue 29: it said "training" as if still running)
    ended = json.loads((tmp_path / "run" / "run.json").read_text())
    assert ended["status"] == "failed" and "train.nonfinite: stop" in ended["error"]["message"]
    monkeypatch.setitem(REGISTRY, "sft", REGISTRY["sft"])  # the cause fixed: resume finishes the run
    poison_sft(monkeypatch, set())
    assert train(config, resume=True, quiet=True).steps == 4


def test_nothing_non_finite_is_saved(tmp_path, tokenizer):
    model = lora_tiny(tokenizer, seed=1)
    optimizer = build_optimizer(model, TrainConfig(), None)
    root = tmp_path / "checkpoints"
    checkpoint.save_checkpoint(root, 1, model, optimizer, {}, keep_last=3)
    with torch.no_grad():
        next(p for p in model.parameters() if p.requires_grad)[0, 0] = float("inf")
    with pytest.raises(TrainingError, match="not saving the checkpoint of step 2"):
        checkpoint.save_checkpoint(root, 2, model, optimizer, {}, keep_last=3)
    assert [p.name for p in root.iterdir()] == ["step-00000001"]
