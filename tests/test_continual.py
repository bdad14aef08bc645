"""Continual learning (`strategy: sequential`): the penalties and the accuracy-matrix figures against values
computed by hand, the config's checks before anything loads, every mitigation end to end on the tiny model,
and a kill -9 inside a later task resuming to the bitwise-equal adapter."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from tests.conftest import tiny_config, write_jsonl
from tests.reliability.killing import kill_at, resume
from tuneforge.api import train
from tuneforge.errors import ConfigError
from tuneforge.reports.continual import gap_closed, summary, write_report
from tuneforge.strategies import penalties

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def test_l2sp_and_ewc_by_hand():
    params, anchors = {"a": torch.tensor([1.0, 2.0])}, {"a": torch.tensor([0.0, 0.0])}
    assert float(penalties.l2sp(params, anchors, 2.0)) == pytest.approx(5.0)  # 2/2 · (1 + 4)
    fisher = {"a": torch.tensor([2.0, 0.5])}
    assert float(penalties.ewc(params, anchors, fisher, 1.0)) == pytest.approx(2.0)  # 1/2 · (2·1 + 0.5·4)
    grads = [{"a": torch.tensor([1.0, 4.0])}, {"a": torch.tensor([3.0, 0.0])}]
    assert penalties.diagonal_fisher(grads)["a"].tolist() == [2.0, 2.0]


def test_orthogonality_by_hand():
    old = [torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])]  # two layers, rank 1, 2 inputs
    new = [torch.tensor([[1.0, 1.0]]), torch.tensor([[1.0, 0.0]])]
    # layer 1: (1·1 + 0·1)² = 1; layer 2: (0·1 + 1·0)² = 0
    assert float(penalties.orthogonality(new, [old], 0.5)) == pytest.approx(0.5)
    assert float(penalties.orthogonality(new, [old, old], 0.5)) == pytest.approx(1.0)


def test_distillation_by_hand():
    teacher = torch.log(torch.tensor([[0.64, 0.16]]))  # its top 2; the rest of the vocabulary holds 0.2
    ids = torch.tensor([[0, 1]])
    logits = torch.log(torch.tensor([[0.4, 0.1, 0.5]]))  # the same 2 and the rest, 0.5, as one entry
    kl = 0.64 * math.log(0.64 / 0.4) + 0.16 * math.log(0.16 / 0.1) + 0.2 * math.log(0.2 / 0.5)
    assert float(penalties.distillation(logits, teacher, ids, 1.0)) == pytest.approx(kl, rel=1e-5)
    # at T = 2 each of the three is raised to the power 1/2 and normalised again; T² scales the term
    tempered = [[x ** 0.5 / sum(y ** 0.5 for y in row) for x in row] for row in ([0.64, 0.16, 0.2], [0.4, 0.1, 0.5])]
    kl_2 = sum(t * math.log(t / s) for t, s in zip(*tempered, strict=True))
    assert float(penalties.distillation(logits, teacher, ids, 2.0)) == pytest.approx(4 * kl_2, rel=1e-5)
    assert float(penalties.distillation(torch.log(torch.tensor([[0.64, 0.16, 0.2]])), teacher, ids, 2.0)) == \
        pytest.approx(0.0, abs=1e-6)


def test_the_accuracy_matrix_figures_by_hand():
    matrix = [[0, 10, 5], [90, 20, 5], [60, 80, 10], [30, 50, 70]]
    figures = summary(matrix)
    assert figures["average"] == pytest.approx(50.0)
    assert figures["bwt"] == pytest.approx(-45.0)  # ((30 - 90) + (50 - 80)) / 2
    assert figures["fwt"] == pytest.approx(7.5)  # ((20 - 10) + (10 - 5)) / 2
    assert figures["forgetting"] == [60, 30] and figures["mean_forgetting"] == pytest.approx(45.0)
    assert gap_closed(45.0, 30.0, 50.0) == pytest.approx(0.75)


def task_files(tmp_path, tasks: dict[str, str], size: int, split: str) -> list[dict]:
    """Per task a small file whose answers differ by task, so tasks interfere."""
    specs = []
    for task, answer in tasks.items():
        records = [{"prompt": f"{task} item {i}", "completion": f"{answer} {i % 3}"} for i in range(size)]
        specs.append({"path": str(write_jsonl(tmp_path / f"{task}-{split}.jsonl", records)), "task": task})
    return specs


TASKS = {"alpha": "red", "beta": "blue", "gamma": "green"}


def sequential_config(tmp_path, model_dir, mitigation, tasks=TASKS, **train_settings) -> dict:
    tmp_path.mkdir(parents=True, exist_ok=True)
    return tiny_config(tmp_path, model_dir,
                       data={"train": task_files(tmp_path, tasks, 8, "train"),
                             "test": task_files(tmp_path, tasks, 2, "test")},
                       method={"dropout": 0.0},
                       strategy={"name": "sequential", "mitigation": mitigation},
                       train={"max_steps": 2, "batch_size": 4, **train_settings},
                       eval={"metrics": ["loss", "exact_match"], "max_new_tokens": 3})


@pytest.mark.parametrize("mitigation", [{"name": "none"}, {"name": "replay", "size": 6, "fraction": 0.5},
                                        {"name": "ewc", "strength": 10.0, "examples": 3},
                                        {"name": "l2sp", "strength": 10.0},
                                        {"name": "lwf", "examples": 4, "batch_size": 2},
                                        {"name": "olora", "strength": 1.0}])
def test_every_mitigation_fills_the_accuracy_matrix(tmp_path, tiny_model_dir, mitigation):
    config = sequential_config(tmp_path, tiny_model_dir, mitigation)
    if mitigation["name"] == "none":  # each task's phase is a tracker run of its own
        config["output"]["trackers"] = ["mlflow"]
    result = train(config, quiet=True)
    evaluation = json.loads((result.run_dir / "eval.json").read_text())
    cont = evaluation["continual"]
    assert cont["tasks"] == ["alpha", "beta", "gamma"] and len(cont["matrix"]) == 4
    assert all(len(row) == 3 for row in cont["matrix"])
    assert set(cont["summary"]) >= {"average", "bwt", "fwt", "forgetting"}
    assert (result.run_dir / "accuracy_matrix.png").stat().st_size > 1000
    replay = mitigation["name"] == "replay"
    # replayed examples come in addition: 8 of beta and 4 replayed make the task's 2 steps 3
    assert result.steps == (2 + 3 + 3 if replay else 6)
    rows = [json.loads(line) for line in (result.run_dir / "tasks" / "2-beta" / "metrics.jsonl").open()]
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert len(train_rows) == (3 if replay else 2)
    if mitigation["name"] in ("ewc", "l2sp", "lwf", "olora"):  # a penalty from the second task on
        assert all(r["penalty"] >= -1e-5 for r in train_rows)  # a KL of nearly equal models rounds either way
    if mitigation["name"] == "replay":  # earlier tasks' examples join the later ones
        assert any("alpha" in r["tasks"] for r in train_rows)
    # each phase's rows end with its scores after training (the first begins with the base model's), as the
    # phase's result.json has them; with MLflow chosen, each phase's MLflow run holds them
    for phase in ("1-alpha", "2-beta", "3-gamma"):
        rows = [json.loads(line) for line in (result.run_dir / "tasks" / phase / "metrics.jsonl").open()]
        phase_scores = json.loads((result.run_dir / "tasks" / phase / "result.json").read_text())["scores"]
        assert rows[-1]["kind"] == "final_eval" and rows[-1]["tasks"] == phase_scores["tasks"]
        assert (rows[0]["kind"] == "eval_before") == (phase == "1-alpha")
        if mitigation["name"] == "none":
            from mlflow import MlflowClient

            client = MlflowClient(tracking_uri=f"sqlite:///{result.run_dir / 'tasks' / phase / 'mlflow' / 'mlflow.db'}")
            [run] = client.search_runs([client.get_experiment_by_name("tuneforge").experiment_id])
            assert run.info.status == "FINISHED"
            assert run.data.metrics["final_eval/tasks/alpha/loss"] == pytest.approx(
                phase_scores["tasks"]["alpha"]["loss"])
            assert "result.json" in {a.path for a in client.list_artifacts(run.info.run_id)}
    # the run loads like any other: the evaluator of a finished run scores it
    from tuneforge.runs.trained import load_trained

    trained = load_trained(result.run_dir)
    tokens = trained.tokenizer("alpha item 1", return_tensors="pt")
    assert torch.isfinite(trained.model(**tokens).logits).all()
    if mitigation["name"] == "olora":  # one adapter of rank r × tasks holds the three tasks' LoRAs
        config = json.loads((result.run_dir / "adapter" / "adapter_config.json").read_text())
        assert config["r"] == 4 * 3


def test_olora_saves_the_same_outputs_it_was_scored_with(tmp_path, tiny_model_dir):
    config = sequential_config(tmp_path, tiny_model_dir, {"name": "olora"}, lr=0.05)
    result = train(config, quiet=True)
    from tuneforge.runs.evaluate import evaluate_run
    from tuneforge.runs.trained import load_trained

    scores, _ = evaluate_run(load_trained(result.run_dir), config["data"]["test"][2]["path"], ["loss"])
    after = json.loads((result.run_dir / "eval.json").read_text())["after"]["tasks"]["gamma"]
    assert scores["loss"] == pytest.approx(after["loss"], rel=1e-4)


def test_the_config_is_checked_before_anything_loads(tmp_path, tiny_model_dir):
    config = sequential_config(tmp_path, tiny_model_dir, {"name": "ewc", "strenght": 1.0})
    with pytest.raises(ConfigError, match=r"(?s)mitigation\.strenght.*did you mean 'strategy\.mitigation\.strength'"):
        train(config, quiet=True)
    config = sequential_config(tmp_path, tiny_model_dir, {"name": "replai"})
    with pytest.raises(ConfigError, match="did you mean 'replay'"):
        train(config, quiet=True)
    config = sequential_config(tmp_path, tiny_model_dir, {"name": "none"})
    config["data"]["test"] = config["data"]["test"][:2]
    with pytest.raises(ConfigError, match=r"(?s)no test set for task.*gamma"):
        train(config, quiet=True)
    config = sequential_config(tmp_path, tiny_model_dir, {"name": "none"})
    config["data"]["train"][1].pop("task")
    with pytest.raises(ConfigError, match=r"(?s)entry 1 .* names no task"):
        train(config, quiet=True)
    config = sequential_config(tmp_path, tiny_model_dir, {"name": "olora"})
    config["method"] = {"name": "ia3"}
    with pytest.raises(ConfigError, match="olora"):
        train(config, quiet=True)


KILLED = {"max_steps": 3, "save_every": 1, "keep_last": 5}


@pytest.fixture(scope="module")
def ewc_reference(tmp_path_factory, tiny_model_dir):
    """The uninterrupted sequential run the killed ones must end on."""
    return train(sequential_config(tmp_path_factory.mktemp("reference"), tiny_model_dir,
                                   {"name": "ewc", "strength": 50.0}, **KILLED), quiet=True)


@pytest.mark.parametrize(("target", "nth"), [
    ("tuneforge.engine.checkpoint:write_checkpoint", 6),  # inside the third task, after its first checkpoint
    ("tuneforge.strategies.continual:_save_phase", 2),  # after the second task trained, before its state saved
])
def test_a_kill_in_a_later_task_resumes_to_the_same_weights(tmp_path, tiny_model_dir, ewc_reference, target, nth):
    reference = ewc_reference
    config = sequential_config(tmp_path / "killed", tiny_model_dir, {"name": "ewc", "strength": 50.0}, **KILLED)
    path = tmp_path / "killed" / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    assert kill_at(target, nth, path).returncode == -9
    finished = sorted(p.parent.name for p in (tmp_path / "killed" / "run" / "tasks").glob("*/result.json"))
    assert finished == (["1-alpha", "2-beta"] if "checkpoint" in target else ["1-alpha"])
    resumed = resume(path)
    assert resumed.returncode == 0, resumed.stdout
    adapter = "adapter/adapter_model.safetensors"
    assert (tmp_path / "killed" / "run" / adapter).read_bytes() == (reference.run_dir / adapter).read_bytes()
    mine = json.loads((tmp_path / "killed" / "run" / "eval.json").read_text())["continual"]["matrix"]
    assert mine == json.loads((reference.run_dir / "eval.json").read_text())["continual"]["matrix"]


def test_the_report_puts_runs_side_by_side(tmp_path, tiny_model_dir):
    runs = {}
    for name in ("none", "replay"):
        runs[name] = train(sequential_config(tmp_path / name, tiny_model_dir, {"name": name}), quiet=True).run_dir
    joint_config = sequential_config(tmp_path / "joint", tiny_model_dir, {"name": "none"})
    joint_config["strategy"] = {"name": "single"}
    joint = train(joint_config, quiet=True).run_dir
    files = write_report(tmp_path / "report", runs, joint)
    text = files["markdown"].read_text()
    assert "| none |" in text and "| replay |" in text and "| joint (multi-task) |" in text
    assert (tmp_path / "report" / "matrix-none.png").is_file()
    assert "<table>" in files["html"].read_text()


def test_a_bad_sequential_config_exits_2_naming_the_line_before_anything_is_written(tmp_path, tiny_model_dir):
    from typer.testing import CliRunner

    from tuneforge.cli import app

    config = sequential_config(tmp_path, tiny_model_dir, {"name": "ewc", "strength": 1.0, "examples": 0})
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    result = CliRunner().invoke(app, ["train", str(path), "--quiet"])
    assert result.exit_code == 2 and "strategy.mitigation.examples" in result.output and "fix:" in result.output
    assert f"{path}:" in result.output  # the file and line of the strategy section
    assert not (tmp_path / "run").exists()
