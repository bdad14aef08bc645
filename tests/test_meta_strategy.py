"""`strategy: meta` end to end on a tiny model and the bundled family: the outer loop's figures in metrics.jsonl,
an initialisation saved like any run's, the targets never read, located refusals, and a kill -9 inside an inner loop
resumed to the bitwise-same adapter (promises 1 and 4)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import tiny_config
from tests.reliability.killing import kill_at, resume
from tuneforge.api import train
from tuneforge.data.family import read_family
from tuneforge.errors import ConfigError
from tuneforge.runs.layout import read_metrics

pytestmark = pytest.mark.numerical
STRATEGY = {"name": "meta", "algorithm": "fomaml", "meta_batch": 2, "inner_steps": 2, "support": 2, "query": 2,
            "inner_lr": 0.05}


def meta_config(directory: Path, model_dir: Path, **strategy) -> dict:
    directory.mkdir(parents=True, exist_ok=True)
    config = tiny_config(directory, model_dir, train={"max_steps": 3, "lr": 1e-2, "save_every": 1, "keep_last": 5},
                         eval={"metrics": ["loss"], "max_examples": 2})
    config["data"] = {}
    config["method"]["dropout"] = 0.0
    config["strategy"] = {**STRATEGY, **strategy}
    return config


def test_meta_run_trains_on_episodes_and_saves_an_initialisation(tmp_path, tiny_model_dir):
    result = train(meta_config(tmp_path, tiny_model_dir), quiet=True)
    rows = [r for r in read_metrics(result.run_dir) if r["kind"] == "train"]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(r["query_loss_after"] < r["query_loss_before"] for r in rows)  # each task's inner loop helped
    assert all(len(r["tasks"]) == 2 and sum(r["tasks"].values()) == 2 * (2 * 2 + 2) for r in rows)
    family = read_family("textops")
    trained = {task for r in rows for task in r["tasks"]}
    assert trained <= set(family.meta_train) and not trained & set(family.targets)
    scored = set(result.eval_after["tasks"])
    assert scored == set(family.meta_train)  # held out: the meta-training tasks' own test sets, never a target's
    assert (result.run_dir / "adapter" / "adapter_config.json").is_file()
    record = yaml.safe_load((result.run_dir / "run.json").read_text())
    assert record["strategy"]["algorithm"] == "fomaml" and record["status"] == "complete"


def test_located_refusals(tmp_path, tiny_model_dir):
    with pytest.raises(ConfigError, match=r"strategy.meta_batch.*13 tasks.*12 meta-training tasks"):
        train(meta_config(tmp_path, tiny_model_dir, meta_batch=13), quiet=True)
    with pytest.raises(ConfigError, match=r"fewer examples than one episode draws \(2562"):
        train(meta_config(tmp_path, tiny_model_dir, support=1280), quiet=True)


def test_kill_inside_an_inner_loop_resumes_bitwise(tmp_path, tiny_model_dir):
    reference = train(meta_config(tmp_path / "reference", tiny_model_dir), quiet=True).run_dir
    directory = tmp_path / "killed"
    config = directory / "run.yaml"
    settings = meta_config(directory, tiny_model_dir)
    config.write_text(yaml.safe_dump(settings))
    # two inner loops a step: the 4th is step 2's second task, after the checkpoint of step 1
    killed = kill_at("tuneforge.strategies.metalearning:adapt", 4, config)
    assert killed.returncode == -9, killed.stderr
    resumed = resume(config)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from step-00000001" in resumed.stdout

    def steps(run: Path) -> list:
        return [(r["step"], r["samples"], r["loss"]) for r in read_metrics(run) if r["kind"] == "train"]

    assert steps(directory / "run") == steps(reference)
    weights = "adapter/adapter_model.safetensors"
    assert (directory / "run" / weights).read_bytes() == (reference / weights).read_bytes()


def test_multitask_control_trains_the_same_examples_as_plain_steps(tmp_path, tiny_model_dir):
    """`algorithm: multitask` draws the same episodes (the same samples at every step) and trains them without an
    inner loop: the control a meta-learned start is judged against."""
    meta = train(meta_config(tmp_path / "meta", tiny_model_dir), quiet=True).run_dir
    control = train(meta_config(tmp_path / "control", tiny_model_dir, algorithm="multitask"), quiet=True).run_dir

    def samples(run: Path) -> list:
        return [(r["step"], r["samples"]) for r in read_metrics(run) if r["kind"] == "train"]

    assert samples(control) == samples(meta)
    rows = [r for r in read_metrics(control) if r["kind"] == "train"]
    assert all("query_loss_after" not in r for r in rows)
    weights = "adapter/adapter_model.safetensors"
    assert (control / weights).read_bytes() != (meta / weights).read_bytes()


def test_an_objective_on_pairs_is_refused_before_anything_loads(tmp_path, tiny_model_dir):
    config = meta_config(tmp_path, tiny_model_dir)
    config["objective"] = {"name": "dpo"}
    with pytest.raises(ConfigError, match=r"strategy meta trains objectives on plain examples.*'dpo' trains on pairs"):
        train(config, quiet=True)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("method", [{"name": "ia3"}, {"name": "prompt", "num_virtual_tokens": 4},
                                    {"name": "full"}])
def test_other_methods_meta_learn_their_own_weights(tmp_path, tiny_model_dir, method):
    """Reptile over whatever the method trains: (IA)³'s scaling vectors, prompt tuning's virtual tokens, every weight:
    each task's inner loop moves them (on the random tiny model only full fine-tuning has the capacity to lower the
    near-uniform loss visibly), and the run saves that method's initialisation."""
    config = meta_config(tmp_path, tiny_model_dir, algorithm="reptile", inner_lr=0.05 if method["name"] == "full"
                         else 5.0)
    config["method"] = method
    config["train"]["max_steps"] = 2
    result = train(config, quiet=True)
    rows = [r for r in read_metrics(result.run_dir) if r["kind"] == "train"]
    assert len(rows) == 2 and all(r["query_loss_after"] != r["query_loss_before"] for r in rows)
    if method["name"] == "full":
        assert all(r["query_loss_after"] < r["query_loss_before"] - 0.5 for r in rows)
    assert yaml.safe_load((result.run_dir / "run.json").read_text())["status"] == "complete"
    assert yaml.safe_load((result.run_dir / "config.yaml").read_text())["method"]["name"] == method["name"]
