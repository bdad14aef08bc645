"""`tuneforge sweep` on a tiny model: trials as run directories, conditional keys, a failing trial recorded with its
reason while the sweep goes on, a diverging trial stopped at its first evaluation (run.json `stopped`), best.yaml
ready for `tuneforge train`, the report, located refusals of a bad space before anything trains, and a kill -9
resumed without losing or repeating a trial."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import tiny_config
from tests.reliability.killing import kill_at
from tuneforge.api import sweep
from tuneforge.config import load_config
from tuneforge.errors import ConfigError
from tuneforge.runs.layout import read_json, read_metrics

pytestmark = pytest.mark.numerical
pytest.importorskip("optuna")


def sweep_config(directory: Path, model_dir: Path, **spec) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    config = tiny_config(directory, model_dir, train={"max_steps": 4, "eval_every": 2},
                         eval={"metrics": ["loss"], "max_examples": 4})
    config["data"]["overlong"] = "error"
    config["sweep"] = {"space": {"train.lr": {"low": 1e-4, "high": 1e-2, "log": True},
                                 "method.name": {"choices": ["lora", "ia3"]},
                                 "method.r": {"choices": [2, 4], "when": {"method.name": ["lora"]}}},
                       "trials": 3, "sampler": "random", "seed": 1, **spec}
    path = directory / "sweep.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_trials_are_runs_and_the_best_config_trains(tmp_path, tiny_model_dir):
    config = sweep_config(tmp_path, tiny_model_dir, pruner="none")
    result = sweep(config, tmp_path / "out", quiet=True)
    record = json.loads((tmp_path / "out" / "trials.json").read_text())
    assert len(record["trials"]) == 3 and all(t["state"] == "COMPLETE" for t in record["trials"])
    for trial in record["trials"]:
        run = Path(trial["run_dir"])
        assert read_json(run / "run.json")["status"] == "complete" and trial["steps"] == 4
        method = yaml.safe_load((run / "config.yaml").read_text())["method"]
        assert method["name"] == trial["params"]["method.name"]
        assert ("method.r" in trial["params"]) == (method["name"] == "lora")  # searched only under its condition
        if method["name"] == "lora":
            assert method["r"] == trial["params"]["method.r"]
        evaluated = [(r["kind"], r["step"]) for r in read_metrics(run) if "eval" in r["kind"]]
        assert evaluated == [("eval", 2), ("final_eval", 4)]  # step 2: what a pruner sees
    best = min(record["trials"], key=lambda t: t["scores"]["loss"])
    assert [t["number"] for t in result.best] == [best["number"]]
    chosen = load_config(tmp_path / "out" / "best.yaml").run
    assert chosen.train.lr == pytest.approx(best["params"]["train.lr"]) and chosen.sweep is None
    for name in ("sweep.md", "sweep.html", "sweep.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0


def test_two_objectives_give_the_pareto_front(tmp_path, tiny_model_dir):
    """Loss against trainable parameters: the best trials are exactly the non-dominated ones, the report says so
    and that the pruner is off (Optuna prunes single-objective studies only)."""
    config = sweep_config(tmp_path, tiny_model_dir, trials=4, objectives=[
        {"metric": "loss", "direction": "minimize"}, {"metric": "trainable_parameters", "direction": "minimize"}])
    result = sweep(config, tmp_path / "out", quiet=True)
    done = [t for t in result.trials if t["state"] == "COMPLETE"]
    assert len(done) == 4 and all(set(t["scores"]) == {"loss", "trainable_parameters"} for t in done)

    def dominates(a: dict, b: dict) -> bool:
        pairs = [(a["scores"][m], b["scores"][m]) for m in ("loss", "trainable_parameters")]
        return all(x <= y for x, y in pairs) and any(x < y for x, y in pairs)

    front = {t["number"] for t in done if not any(dominates(o, t) for o in done)}
    assert {t["number"] for t in result.best} == front
    report = (tmp_path / "out" / "sweep.md").read_text()
    assert ("## Pareto front" in report) == (len(front) > 1) and "pruner median (off" in report
    assert load_config(tmp_path / "out" / "best.yaml").run.sweep is None
    import optuna  # optuna-dashboard names its axes after the study's metric names

    study = optuna.load_study(study_name="tuneforge", storage=f"sqlite:///{tmp_path / 'out' / 'study.db'}")
    assert study.metric_names == ["loss", "trainable_parameters"]


@pytest.mark.parametrize(("sampler", "pruner"), [("cmaes", "hyperband"), ("tpe", "successive_halving")])
def test_every_sampler_and_pruner_runs_a_study(tmp_path, tiny_model_dir, sampler, pruner):
    config = sweep_config(tmp_path, tiny_model_dir, sampler=sampler, pruner=pruner, trials=3,
                          space={"train.lr": {"low": 1e-4, "high": 1e-2, "log": True},
                                 "train.weight_decay": {"low": 0.0, "high": 0.1}})
    result = sweep(config, tmp_path / "out", quiet=True)
    assert len(result.trials) == 3 and {t["state"] for t in result.trials} <= {"COMPLETE", "PRUNED"}
    assert result.best and json.loads((tmp_path / "out" / "trials.json").read_text())["pruner"] == pruner


def test_a_failing_trial_is_recorded_and_a_diverging_one_stopped(tmp_path, tiny_model_dir):
    """max_seq_len 8 cannot hold the records (overlong: error): that trial fails with its reason, the sweep goes
    on; `diverge: 0` stops every other trial at its first evaluation, as the pruner would."""
    config = sweep_config(tmp_path, tiny_model_dir, space={"data.max_seq_len": {"choices": [8, 64]}},
                          sampler="grid", trials=2, diverge=0.0)
    sweep(config, tmp_path / "out", quiet=True)
    trials = {t["params"]["data.max_seq_len"]: t for t in
              json.loads((tmp_path / "out" / "trials.json").read_text())["trials"]}
    assert trials[8]["state"] == "FAIL" and "max_seq_len" in trials[8]["reason"]
    stopped = trials[64]
    assert stopped["state"] == "PRUNED" and "diverged" in stopped["reason"] and stopped["steps"] == 2
    assert stopped["scores"] == {}  # a stopped trial has no final score (Optuna keeps its last report)
    record = read_json(Path(stopped["run_dir"]) / "run.json")
    assert record["status"] == "stopped" and "diverged" in record["reason"]
    assert not (tmp_path / "out" / "best.yaml").exists()


@pytest.mark.parametrize(("space", "message"), [
    ({"train.lrr": {"low": 1e-4, "high": 1e-3}}, r"(?s)train.lrr=0.0001 does not make.*did you mean 'train.lr'"),
    ({"train.lr": {"low": 1e-3, "high": 1e-4}}, r"sweep.*empty range"),
    ({"train.lr": {"low": 0, "high": 1e-3, "log": True}}, r"log range needs low > 0"),
    ({"method.r": {"choices": [4, "x"]}}, r"method.r='x' does not make a valid config"),
    ({"method.r": {"choices": [4], "when": {"method.kind": ["lora"]}}}, r"condition names method.kind"),
])
def test_a_bad_space_is_refused_with_its_line_before_training(tmp_path, tiny_model_dir, space, message):
    config = sweep_config(tmp_path, tiny_model_dir, space=space)
    with pytest.raises(ConfigError, match=message) as caught:
        sweep(config, tmp_path / "out", quiet=True)
    assert str(config) in str(caught.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.heavy  # a killed interpreter and a resumed sweep: CI runs it in make test-heavy
def test_kill_during_a_trial_then_resume_loses_and_repeats_nothing(tmp_path, tiny_model_dir, capsys):
    config = sweep_config(tmp_path, tiny_model_dir, pruner="none")
    settings = yaml.safe_load(config.read_text())
    settings["train"]["save_every"] = 1
    config.write_text(yaml.safe_dump(settings))
    out = tmp_path / "out"
    # the 2nd trial's 3rd step: trial 0 finished, trial 1 left running in the study
    killed = kill_at("tuneforge.engine.loop:train_step", 7, config, "sweep", "--out", str(out))
    assert killed.returncode == -9, killed.stderr
    result = sweep(config, out, resume=True, quiet=True)
    trials = json.loads((out / "trials.json").read_text())["trials"]
    finished = [t for t in trials if t["state"] == "COMPLETE"]
    assert len(finished) == 3 and len(result.trials) == 4  # the killed trial failed, retried once
    killed_trial = next(t for t in trials if t["state"] == "FAIL")
    retry = next(t for t in finished if t["run_dir"] == killed_trial["run_dir"])
    assert retry["params"] == killed_trial["params"]
    assert len({t["run_dir"] for t in finished}) == 3  # no trial run twice
    assert "resumed from step-00000002" in capsys.readouterr().out  # the retry continued the killed trial's run
    steps = [r["step"] for r in read_metrics(Path(retry["run_dir"])) if r["kind"] == "train"]
    assert steps == [1, 2, 3, 4]


@pytest.mark.heavy  # two spawned interpreters: CI runs it in make test-heavy
def test_two_workers_share_the_study_and_never_run_a_trial_twice(tmp_path, tiny_model_dir):
    config = sweep_config(tmp_path, tiny_model_dir, pruner="none", trials=6)
    result = sweep(config, tmp_path / "out", workers=2, quiet=True)
    trials = [t for t in result.trials if t["state"] == "COMPLETE"]
    assert 6 <= len(trials) <= 7  # the budget, passed by at most one trial per extra worker
    assert len({t["process"] for t in trials}) == 2  # both processes took trials
    assert len({t["number"] for t in trials}) == len({t["run_dir"] for t in trials}) == len(trials)
    states = {json.loads((Path(t["run_dir"]) / "run.json").read_text())["status"] for t in trials}
    assert states == {"complete"}
    for trial in trials:  # each trained once: one row per step
        assert [r["step"] for r in read_metrics(Path(trial["run_dir"])) if r["kind"] == "train"] == [1, 2, 3, 4]


def test_lr_find_suggests_a_third_of_the_lowest_point_and_shows_the_steepest_descent():
    """Hand-computed: the lowest smoothed loss is at 1e-1, so the suggestion is 1e-1 / 3; the central slopes per
    unit of ln(rate) at 1..3 are (3.0-5.0)/ln(100), (1.0-4.9)/ln(100), (0.8-3.0)/ln(100): the steepest at 1e-3."""
    import math

    from tuneforge.reports.lr_find import smooth, suggest

    rates = [1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0]
    smoothed = [5.0, 4.9, 3.0, 1.0, 0.8, 9.0]
    assert suggest(rates, smoothed) == pytest.approx((1e-1 / 3, 1e-1, 1e-3))
    assert suggest(rates[:4], smoothed[:4]) == (None, None, None)  # too few points
    assert suggest(rates, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]) == (None, 1e-5, None)  # never fell: nothing to suggest
    assert smooth([2.0, 4.0]) == pytest.approx([2.0, (0.9 * 0.1 * 2.0 + 0.1 * 4.0) / (1 - 0.9 ** 2)])
    assert math.isclose(smooth([3.0])[0], 3.0)


def test_lr_find_raises_the_rate_exponentially_and_suggests_one_of_them(tmp_path, tiny_model_dir):
    from tuneforge.api import lr_find

    config = tiny_config(tmp_path, tiny_model_dir, output={"dir": str(tmp_path / "run")})
    found = lr_find(config, start=1e-6, end=1e-1, steps=12, quiet=True)
    assert found.run_dir == tmp_path / "run-lr-find"
    expected = [1e-6 * (1e-1 / 1e-6) ** (i / 11) for i in range(len(found.rates))]
    assert found.rates == pytest.approx(expected, rel=1e-6) and len(found.rates) >= 6
    assert found.lowest in found.rates and found.suggested == pytest.approx(found.lowest / 3)
    assert found.steepest in found.rates and found.steepest < found.lowest
    assert json.loads((found.run_dir / "lr_find.json").read_text())["suggested"] == found.suggested
    assert (found.run_dir / "lr_find.png").stat().st_size > 0
    assert not any(r["kind"] in ("eval", "final_eval") for r in read_metrics(found.run_dir))  # no evaluation
