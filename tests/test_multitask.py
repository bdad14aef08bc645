"""Multi-task mixtures: `data.train` entries name their task; the tasks share the data as `data.sampling` says
(proportional, uniform, temperature); each step reports how many examples of each task it trained on; test
entries that name tasks are scored per task, with the mean of the tasks on top."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tests.conftest import tiny_config, write_jsonl
from tuneforge.api import train
from tuneforge.config import DatasetSpec
from tuneforge.data.dataset import load_examples, task_weights
from tuneforge.runs.layout import read_metrics


def task_files(tmp_path, sizes: dict[str, int], split: str = "train") -> list[dict]:
    specs = []
    for task, size in sizes.items():
        records = [{"prompt": f"{task} question {i}", "completion": f"{task} answer {i % 7}"} for i in range(size)]
        specs.append({"path": str(write_jsonl(tmp_path / f"{task}-{split}.jsonl", records)), "task": task})
    return specs


@pytest.mark.parametrize(("sampling", "expected"), [
    ("proportional", [1.0, 1.0]),
    ("uniform", [62.5 / 100, 62.5 / 25]),  # 125 examples, half each
    # T = 2: masses √100 = 10 and √25 = 5, shares 2/3 and 1/3 of 125
    ("temperature", [125 * 2 / 3 / 100, 125 / 3 / 25]),
])
def test_task_weights_by_hand(sampling, expected):
    specs = [DatasetSpec(path="a", task="a"), DatasetSpec(path="b", task="b")]
    assert task_weights(specs, [100, 25], sampling, 2.0) == pytest.approx(expected)


@pytest.mark.parametrize("temperature", [0.001, 1e-6, 1000.0])
def test_extreme_temperatures_give_the_limits_not_an_overflow(temperature):
    """Issue 30, finding 10: data.temperature 0.001 raised OverflowError in n ** (1/T). A T near 0 gives the
    largest task the whole mixture, a large T tends to uniform."""
    specs = [DatasetSpec(path="a", task="a"), DatasetSpec(path="b", task="b")]
    weights = task_weights(specs, [100, 25], "temperature", temperature)
    expected = [1.25, 0.0] if temperature < 1 else [62.5 / 100, 62.5 / 25]
    assert weights == pytest.approx(expected, rel=1e-2)


def test_temperature_sampling_changes_the_counts_as_documented(tmp_path):
    specs = [DatasetSpec(**spec) for spec in task_files(tmp_path, {"big": 100, "small": 25})]
    counts = {}
    for sampling in ("proportional", "temperature", "uniform"):
        mixed = load_examples(specs, seed=0, sampling=sampling, temperature=2.0)
        counts[sampling] = {task: sum(e.task == task for e in mixed) for task in ("big", "small")}
    assert counts["proportional"] == {"big": 100, "small": 25}
    assert counts["temperature"] == {"big": 83, "small": 42}  # 125 · 2/3 and 125 · 1/3, rounded
    assert counts["uniform"] == {"big": 62, "small": 62}  # 62.5 each: a seeded half-sample rounds down
    # a large T tends to uniform, T = 1 is proportional
    one = load_examples(specs, seed=0, sampling="temperature", temperature=1.0)
    assert sum(e.task == "small" for e in one) == 25


def test_a_three_task_mixture_reports_per_task_counts_and_scores(tmp_path, tiny_model_dir):
    train_specs = task_files(tmp_path, {"alpha": 12, "beta": 8, "gamma": 4})
    test_specs = task_files(tmp_path, {"alpha": 3, "beta": 3, "gamma": 3}, split="test")
    config = tiny_config(tmp_path, tiny_model_dir, data={"train": train_specs, "test": test_specs,
                                                         "sampling": "uniform"},
                         train={"max_steps": 4, "batch_size": 6}, eval={"metrics": ["loss", "exact_match"],
                                                                        "compare_base": True})
    result = train(config, quiet=True)
    rows = [r for r in read_metrics(result.run_dir) if r["kind"] == "train"]
    assert all(sum(r["tasks"].values()) == 6 and set(r["tasks"]) <= {"alpha", "beta", "gamma"} for r in rows)
    assert {t for r in rows for t in r["tasks"]} == {"alpha", "beta", "gamma"}
    evaluation = json.loads((result.run_dir / "eval.json").read_text())
    for moment in ("before", "after"):
        tasks = evaluation[moment]["tasks"]
        assert set(tasks) == {"alpha", "beta", "gamma"}
        assert evaluation[moment]["loss"] == pytest.approx(sum(t["loss"] for t in tasks.values()) / 3)
    assert {s["task"] for s in evaluation["samples"]} == {"alpha", "beta", "gamma"}
    table = (result.run_dir / "tasks.md").read_text()  # the report: each task before -> after, and the mean
    assert all(f"| {task} | loss |" in table for task in ("alpha", "beta", "gamma", "mean of the tasks"))


def test_the_console_table_shows_each_task(tmp_path, tiny_model_dir):
    import yaml

    from tuneforge.cli import app

    config = tiny_config(tmp_path, tiny_model_dir, data={"train": task_files(tmp_path, {"alpha": 8, "beta": 8}),
                                                         "test": task_files(tmp_path, {"alpha": 2, "beta": 2},
                                                                            split="test")},
                         train={"max_steps": 1}, eval={"metrics": ["loss"], "compare_base": True})
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(app, ["train", str(path), "--quiet"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(line.split()[:1] == ["loss"] for line in lines)  # the mean of the tasks
    assert any(line.split()[:1] == ["alpha/loss"] for line in lines) and any(
        line.split()[:1] == ["beta/loss"] for line in lines)


def test_per_task_adapters_are_served_on_one_base_and_merge(tmp_path, tiny_model_dir):
    from tuneforge.cli import app

    config = tiny_config(tmp_path, tiny_model_dir,
                         data={"train": task_files(tmp_path, {"alpha": 8, "beta": 8}),
                               "test": task_files(tmp_path, {"alpha": 2, "beta": 2}, split="test")},
                         strategy={"name": "multitask", "adapters": "per_task"},
                         train={"max_steps": 2}, eval={"metrics": ["loss"], "compare_base": True})
    result = train(config, quiet=True)
    for task in ("alpha", "beta"):  # each task's adapter is a complete run, trained on its task only
        task_run = result.run_dir / "adapters" / task
        assert json.loads((task_run / "run.json").read_text())["status"] == "complete"
        trained_on = {r["tasks"].popitem()[0] for r in read_metrics(task_run) if r["kind"] == "train"}
        assert trained_on == {task}
    evaluation = json.loads((result.run_dir / "eval.json").read_text())
    assert set(evaluation["after"]["tasks"]) == {"alpha", "beta"}
    assert evaluation["after"]["loss"] == pytest.approx(
        sum(t["loss"] for t in evaluation["after"]["tasks"].values()) / 2)
    chat = CliRunner().invoke(app, ["chat", str(result.run_dir), "--message", "alpha question 1",
                                    "--message", "/use beta", "--message", "beta question 1", "--max-new-tokens", "3"])
    assert chat.exit_code == 0, chat.output
    assert "alpha: " in chat.output and "using beta" in chat.output and "beta: " in chat.output
    merged = CliRunner().invoke(app, ["merge", str(result.run_dir), "--out", str(tmp_path / "merged")])
    assert merged.exit_code == 0, merged.output
    assert (tmp_path / "merged" / "adapter" / "adapter_model.safetensors").is_file()
    # issue 30, finding 11: eval, export and student make called the finished run "did not finish"
    for args in (["eval", str(result.run_dir), "--data", config["data"]["test"][0]["path"]],
                 ["export", str(result.run_dir), "--out", str(tmp_path / "hf"), "--merge"],
                 ["student", "make", "--from", str(result.run_dir), "--layers", "1", "--out", str(tmp_path / "s")]):
        refused = CliRunner().invoke(app, args)
        assert refused.exit_code == 2 and "per-task multitask run" in refused.output, refused.output
        assert f"e.g. {result.run_dir / 'adapters' / 'alpha'}" in refused.output
        assert "did not finish" not in refused.output


def test_shared_adapters_train_the_mixture_in_one_run(tmp_path, tiny_model_dir):
    config = tiny_config(tmp_path, tiny_model_dir, data={"train": task_files(tmp_path, {"alpha": 8, "beta": 8})},
                         strategy={"name": "multitask", "adapters": "shared"}, train={"max_steps": 2})
    result = train(config, quiet=True)
    assert (result.run_dir / "adapter").is_dir() and result.steps == 2
