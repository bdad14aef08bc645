"""Promise 2: a checkpoint counts only when its manifest (sha256 of every file, written last) verifies.
A flipped byte or a missing manifest is detected; resume falls back to the newest good checkpoint, and
fails with a message naming each bad one when none is good."""

from __future__ import annotations

import json

import pytest

from tests.conftest import lora_tiny
from tuneforge.config import TrainConfig
from tuneforge.engine import checkpoint
from tuneforge.engine.optim import build_optimizer
from tuneforge.errors import CheckpointError
from tuneforge.runs.run import resume_point as _check_run_dir


def flip_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture
def run_dir(tmp_path, tokenizer):
    model = lora_tiny(tokenizer, seed=3)
    optimizer = build_optimizer(model, TrainConfig(), None)
    sum(p.sum() for p in model.parameters() if p.requires_grad).backward()
    optimizer.step()  # the optimizer has state to save
    root = tmp_path / "run" / "checkpoints"
    for step in (2, 4, 6):
        checkpoint.save_checkpoint(root, step, model, optimizer, {"step": step}, keep_last=3)
    (tmp_path / "run" / "run.json").write_text(json.dumps({"status": "training"}))
    return tmp_path / "run"


@pytest.mark.parametrize("damaged", ["trainable.safetensors", "optimizer.safetensors", "rng.safetensors",
                                     "state.json", "optimizer.json"])
def test_a_flipped_byte_is_detected_and_resume_falls_back(run_dir, damaged):
    flip_byte(run_dir / "checkpoints" / "step-00000006" / damaged)
    found, skipped = checkpoint.latest_checkpoint(run_dir / "checkpoints")
    assert found.name == "step-00000004"
    assert skipped == [f"step-00000006: {damaged} does not match its sha256"]
    assert _check_run_dir(run_dir, resume=True, overwrite=False).name == "step-00000004"


def test_an_unfinished_write_is_skipped(run_dir):
    (run_dir / "checkpoints" / "step-00000006" / checkpoint.MANIFEST).unlink()  # killed before the manifest
    (run_dir / "checkpoints" / "step-00000004" / "optimizer.safetensors").unlink()
    found, skipped = checkpoint.latest_checkpoint(run_dir / "checkpoints")
    assert found.name == "step-00000002"
    assert skipped == ["step-00000006: no manifest (the write did not finish)",
                       "step-00000004: missing optimizer.safetensors"]


def test_no_good_checkpoint_fails_clearly(run_dir):
    for step in (2, 4, 6):
        flip_byte(run_dir / "checkpoints" / f"step-{step:08d}" / "trainable.safetensors")
    with pytest.raises(CheckpointError) as err:
        _check_run_dir(run_dir, resume=True, overwrite=False)
    message = str(err.value)
    assert "no complete checkpoint" in message and "fix:" in message
    for step in (2, 4, 6):
        assert f"step-{step:08d}: trainable.safetensors does not match its sha256" in message
