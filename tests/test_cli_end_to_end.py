"""The CLI end to end on a tiny model: train -> run directory -> eval -> chat, and data check."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from typer.testing import CliRunner

from tests.conftest import tiny_config
from tuneforge.cli import app

# compares numbers from runs: `make test-bf16` runs it again with the precision forced to bf16
pytestmark = pytest.mark.numerical

runner = CliRunner()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_model_dir):
    tmp_path = tmp_path_factory.mktemp("e2e")
    config = tiny_config(tmp_path, tiny_model_dir, eval={"metrics": ["loss", "exact_match", "rouge", "bleu"],
                                                         "compare_base": True},
                         output={"dir": str(tmp_path / "run"), "tensorboard": True})
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    result = runner.invoke(app, ["train", str(path), "train.max_steps=3", "method.r=2", "--quiet"])
    assert result.exit_code == 0, result.output
    return tmp_path / "run", result.output


def test_train_writes_the_run_directory(trained_run):
    run_dir, output = trained_run
    for name in ("config.yaml", "metrics.jsonl", "adapter/adapter_model.safetensors", "adapter/adapter_config.json",
                 "tokenizer/tokenizer.json", "eval.json", "loss.png", "run.json"):
        assert (run_dir / name).is_file(), name
    assert any((run_dir / "tensorboard").iterdir())
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["method"] == {"name": "lora", "r": 2, "alpha": 8, "dropout": 0.1}
    assert saved["train"]["max_steps"] == 3
    evaluation = json.loads((run_dir / "eval.json").read_text())
    assert {"loss", "exact_match", "rouge1", "bleu"} <= set(evaluation["after"])
    assert set(evaluation["before"]) == set(evaluation["after"])
    assert "before" in output and "after" in output and "step 3/3" in output
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3]


def test_eval_command_reports_metrics(trained_run, tmp_path):
    run_dir, _ = trained_run
    data = tmp_path / "eval.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Say {i}", "completion": str(i)}) + "\n" for i in range(5)))
    out = tmp_path / "scores.json"
    result = runner.invoke(app, ["eval", str(run_dir), "--data", str(data), "--metrics",
                                 "exact_match,rouge,bleu,loss", "--output", str(out)])
    assert result.exit_code == 0, result.output
    for name in ("exact_match", "rouge1", "rouge2", "rougeL", "bleu", "loss", "perplexity"):
        assert name in result.output
    assert len(json.loads(out.read_text())["samples"]) == 5


def test_eval_rejects_unknown_metric(trained_run, tmp_path):
    run_dir, _ = trained_run
    result = runner.invoke(app, ["eval", str(run_dir), "--data", "x.jsonl", "--metrics", "accuracy"])
    assert result.exit_code != 0


def test_chat_answers_scripted_messages(trained_run):
    run_dir, _ = trained_run
    result = runner.invoke(app, ["chat", str(run_dir), "--message", "hello", "--message", "again",
                                 "--max-new-tokens", "3"])
    assert result.exit_code == 0, result.output
    assert result.output.count("assistant:") == 2


def test_saved_adapter_loads_in_peft_with_identical_logits(trained_run, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tuneforge.engine.precision import autocast_factory, ready_for_inference
    from tuneforge.runs.trained import load_trained

    run_dir, _ = trained_run
    trained = load_trained(run_dir)  # in the run's precision (fp32, or bf16 frozen weights under autocast)
    ours = trained.model.cpu()  # on the GPU where there is one; compared on the CPU
    chosen = trained.config.train.precision
    # peft's own loading of the saved adapter, placed in the same precision
    plain = ready_for_inference(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                                          run_dir / "adapter"), chosen, torch.device("cpu"))
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = torch.randint(0, 1000, (2, 12))
    with torch.no_grad(), autocast_factory(chosen, torch.device("cpu"))():
        expected = plain(input_ids=ids).logits
        torch.testing.assert_close(ours(input_ids=ids).logits, expected, atol=0, rtol=0)
    with torch.no_grad():
        assert not torch.allclose(base(input_ids=ids).logits, expected.float())  # the adapter changed the model


def test_data_check_marks_trained_tokens(tmp_path, tiny_model_dir):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(tiny_config(tmp_path, tiny_model_dir)))
    result = runner.invoke(app, ["data", "check", str(path)])
    assert result.exit_code == 0, result.output
    assert "[train] 24 examples: 24 kept, 0 truncated, 0 dropped" in result.output
    assert "⟦0 <|im_end|>⟧" in result.output  # the completion and its end-of-turn token, nothing else
    assert "length min" in result.output


def test_missing_run_directory_is_a_user_error(tmp_path):
    result = runner.invoke(app, ["chat", str(tmp_path / "nope"), "--message", "hi"])
    assert result.exit_code == 2
    assert "not a tuneforge run directory" in result.output


def test_existing_output_dir_needs_resume_or_overwrite(trained_run, tmp_path, tiny_model_dir):
    run_dir, _ = trained_run
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(tiny_config(tmp_path, tiny_model_dir, output={"dir": str(run_dir)})))
    result = runner.invoke(app, ["train", str(path)])
    assert result.exit_code == 2 and "already holds a run" in result.output
    result = runner.invoke(app, ["train", str(path), "--resume"])
    assert result.exit_code == 2 and "already complete" in result.output


def test_resume_without_checkpoint_explains(tmp_path, tiny_model_dir):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints" / "step-00000002").mkdir(parents=True)  # a write that never finished: no manifest
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(tiny_config(tmp_path, tiny_model_dir, output={"dir": str(run_dir)})))
    result = runner.invoke(app, ["train", str(path), "--resume"])
    assert result.exit_code == 2
    assert "no complete checkpoint" in result.output and "step-00000002: no manifest" in result.output


def test_methods_command_lists_every_method_and_objective():
    from tuneforge.methods import REGISTRY as METHODS
    from tuneforge.objectives import REGISTRY as OBJECTIVES

    result = runner.invoke(app, ["methods"])
    assert result.exit_code == 0
    listed = {line.split()[0] for line in result.output.splitlines() if line.startswith("  ") and line[2] != " "}
    assert set(METHODS) | set(OBJECTIVES) <= listed
