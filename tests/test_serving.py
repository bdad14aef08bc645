"""Several tasks on one base: two adapters loaded once, each answering as it was trained."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from tests.conftest import TEST_PRECISION, write_jsonl
from tuneforge.api import load_adapter_set, train
from tuneforge.cli import app
from tuneforge.errors import ConfigError

# compares numbers from runs: `make test-bf16` runs it again with the precision forced to bf16
pytestmark = pytest.mark.numerical

QUESTION = "Which task is this?"


def constant_task_run(tmp_path, model_dir, name: str, answer: str):
    records = [{"prompt": f"{QUESTION} {i}", "completion": answer} for i in range(16)]
    data = write_jsonl(tmp_path / f"{name}.jsonl", records)
    config = {"model": str(model_dir), "method": {"name": "lora", "r": 8, "alpha": 16, "dropout": 0.0},
              "data": {"train": str(data), "max_seq_len": 64},
              "train": {"max_steps": 25, "batch_size": 8, "lr": 1e-2, "schedule": "constant", "seed": 1,
                        "precision": TEST_PRECISION},
              "eval": {"metrics": []}, "output": {"dir": str(tmp_path / name), "tensorboard": False}}
    return train(config, quiet=True).run_dir


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("serving")
    return constant_task_run(tmp, tiny_model_dir, "alpha", "alpha alpha"), \
        constant_task_run(tmp, tiny_model_dir, "beta", "beta beta")


def test_two_adapters_answer_per_adapter_on_one_base(two_runs, monkeypatch):
    import tuneforge.runs.serving as serving

    loads = []
    original = serving.load_causal_lm
    monkeypatch.setattr(serving, "load_causal_lm", lambda *a, **k: loads.append(1) or original(*a, **k))
    adapters = load_adapter_set(two_runs)
    conversation = [[{"role": "user", "content": f"{QUESTION} 3"}]]
    for _ in range(2):  # switch back and forth: each answer follows its adapter
        assert adapters.generate("alpha", conversation, max_new_tokens=6)[0].startswith("alpha")
        assert adapters.generate("beta", conversation, max_new_tokens=6)[0].startswith("beta")
    assert loads == [1]  # the base model was loaded once
    with pytest.raises(ConfigError, match="no adapter named 'gamma'"):
        adapters.use("gamma")


def test_chat_switches_adapters_with_use(two_runs):
    result = CliRunner().invoke(app, ["chat", *map(str, two_runs), "--max-new-tokens", "6",
                                      "--message", f"{QUESTION} 1", "--message", "/use beta",
                                      "--message", f"{QUESTION} 1"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith(("alpha:", "beta:"))]
    assert lines[0].startswith("alpha: alpha") and lines[1].startswith("beta: beta"), result.output
