"""Promise 3: a resume continues the same run. With changed training data, a changed training config or
another tokenizer it stops before loading the model, naming what changed; `--force` continues anyway."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tests.conftest import qa_records, tiny_config, write_jsonl
from tuneforge.api import train
from tuneforge.cli import app
from tuneforge.errors import CheckpointError


@pytest.fixture
def interrupted(tmp_path, tiny_model_dir):
    """A run with checkpoints whose status says it was still training (as after a crash)."""
    config = tiny_config(tmp_path, tiny_model_dir, train={"max_steps": 4, "save_every": 2})
    result = train(config, quiet=True)
    status = json.loads((result.run_dir / "run.json").read_text())
    (result.run_dir / "run.json").write_text(json.dumps(status | {"status": "training"}))
    return config


def test_resume_with_the_same_run_is_allowed(interrupted):
    assert train(interrupted, resume=True, quiet=True).steps == 4


def test_a_changed_config_is_named(interrupted):
    changed = {**interrupted, "train": {**interrupted["train"], "lr": 2e-3}}
    with pytest.raises(CheckpointError, match=r"config keys changed: train\.lr \(0\.001 -> 0\.002\)") as err:
        train(changed, resume=True, quiet=True)
    assert "--force" in str(err.value)
    # evaluation and output settings do not change the weights: not a different run
    assert train({**interrupted, "eval": {**interrupted["eval"], "max_new_tokens": 8}}, resume=True,
                 quiet=True).steps == 4


def test_changed_data_is_named_and_force_continues(interrupted, tmp_path):
    write_jsonl(tmp_path / "train.jsonl", qa_records(24)[::-1][:20])
    with pytest.raises(CheckpointError, match="the training data"):
        train(interrupted, resume=True, quiet=True)
    path = tmp_path / "run.yaml"
    path.write_text(json.dumps(interrupted))
    result = CliRunner().invoke(app, ["train", str(path), "--resume", "--force", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "continuing because of --force" in result.output


def test_a_changed_tokenizer_is_named(tmp_path, tiny_model_dir):
    import shutil

    from transformers import AutoTokenizer

    model_dir = shutil.copytree(tiny_model_dir, tmp_path / "model")
    config = tiny_config(tmp_path, model_dir, train={"max_steps": 2, "save_every": 1})
    train(config, quiet=True)
    status = tmp_path / "run" / "run.json"
    status.write_text(json.dumps(json.loads(status.read_text()) | {"status": "training"}))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)  # same path, same data tokens, one token more
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|tuneforge-extra|>"]})
    tokenizer.save_pretrained(model_dir)
    with pytest.raises(CheckpointError, match="the tokenizer changed") as err:
        train(config, resume=True, quiet=True)
    assert "training data" not in str(err.value) and "config keys" not in str(err.value)
