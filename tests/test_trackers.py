"""Trackers: an MLflow run written by a tuneforge run opens with MLflow's own client and holds the run's config,
every metric row and the same final scores as eval.json; the base model's scores are a metrics row too."""

from __future__ import annotations

import json

import pytest

from tests.conftest import tiny_config
from tuneforge.api import train
from tuneforge.runs.layout import read_metrics


def test_an_mlflow_run_holds_the_config_the_metrics_and_eval_json_s_scores(tmp_path, tiny_model_dir, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = tiny_config(tmp_path, tiny_model_dir, output={"trackers": ["mlflow"]},
                         eval={"compare_base": True})
    run_dir = train(config, quiet=True).run_dir
    scores = json.loads((run_dir / "eval.json").read_text())

    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tuneforge")
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == run_dir.name
    assert run.data.params["train.lr"] == "0.001" and run.data.params["method.name"] == "lora"
    for kind, figures in (("final_eval", scores["after"]), ("eval_before", scores["before"])):
        for metric, value in figures.items():
            assert run.data.metrics[f"{kind}/{metric}"] == pytest.approx(value), (kind, metric)
    losses = [m.value for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert losses == pytest.approx([r["loss"] for r in read_metrics(run_dir) if r["kind"] == "train"])
    kept = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"eval.json", "run.json", "config.yaml", "metrics.jsonl"} <= kept
    # metrics.jsonl has the base model's row too, before the first step's
    assert read_metrics(run_dir)[0]["kind"] == "eval_before"
    assert not (run_dir / "tensorboard").exists()  # not chosen


def test_a_run_that_fails_ends_its_mlflow_run_failed(tmp_path, tiny_model_dir, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    import tuneforge.strategies.phase as single

    def broken(*args, **kwargs):
        raise RuntimeError("the loop broke")

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(single, "train_loop", broken)
    with pytest.raises(RuntimeError, match="the loop broke"):
        train(tiny_config(tmp_path, tiny_model_dir, output={"trackers": ["mlflow"]}), quiet=True)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'run' / 'mlflow' / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("tuneforge").experiment_id])
    assert run.info.status == "FAILED"


def test_every_number_of_a_row_reaches_the_trackers_by_its_path(tmp_path):
    from tuneforge.runs.metrics import MetricsLog

    class Kept:
        def __init__(self, *args):
            self.rows = []

        def log(self, step, numbers):
            self.rows.append(numbers)

    metrics = MetricsLog(tmp_path)
    metrics._trackers = {"kept": (kept := Kept())}
    metrics.log(3, "train", {"loss": 0.5, "skipped": False, "samples": [1, 2],
                             "tasks": {"iso": 3, "upper": {"exact_match": 50.0}}})
    metrics._file.close()
    assert kept.rows == [{"train/loss": 0.5, "train/tasks/iso": 3.0, "train/tasks/upper/exact_match": 50.0}]


def test_names_mlflow_refuses_are_made_safe():
    from tuneforge.runs.metrics import _mlflow_key

    assert _mlflow_key("eval/quickstart:iso/exact_match") == "eval/quickstart_iso/exact_match"
    assert _mlflow_key("train.lr") == "train.lr"


def test_trackers_default_to_tensorboard_and_unknown_ones_are_refused(tmp_path):
    from tuneforge.config import OutputConfig, load_config
    from tuneforge.errors import ConfigError

    assert OutputConfig().chosen_trackers == ["tensorboard"]
    assert OutputConfig(tensorboard=False).chosen_trackers == []
    assert OutputConfig(trackers=["mlflow", "tensorboard", "mlflow"]).chosen_trackers == ["mlflow", "tensorboard"]
    path = tmp_path / "bad.yaml"
    path.write_text("data: {train: 'quickstart:train'}\noutput:\n  trackers: [mlfow]\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:3.*output.trackers"):
        load_config(path)


def wandb_records(run_dir):
    """The records of an offline W&B run, read from its .wandb file with W&B's own protobuf classes (the file is
    a LevelDB-style log: 32 KiB blocks of records, each a 7-byte header — checksum, length, type — and data)."""
    import struct

    from wandb.proto import wandb_internal_pb2

    [path] = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    data, position, pending = path.read_bytes(), 7, b""
    assert data.startswith(b":W&B")
    while position + 7 <= len(data):
        left = 32768 - position % 32768
        _, length, kind = struct.unpack("<IHB", data[position:position + 7]) if left >= 7 else (0, 0, 0)
        if left < 7 or length == kind == 0:  # the rest of a block is padding
            position += left
            continue
        payload = data[position + 7:position + 7 + length]
        position += 7 + length
        pending = payload if kind in (1, 2) else pending + payload
        if kind in (1, 4):  # a whole record, or a record's last piece
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def test_a_wandb_run_is_offline_without_a_login_and_holds_the_metrics_and_files(tmp_path, tiny_model_dir,
                                                                                 monkeypatch):
    pytest.importorskip("wandb")
    for name in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc: not logged in
    config = tiny_config(tmp_path, tiny_model_dir, output={"trackers": ["wandb"]}, eval={"compare_base": True})
    run_dir = train(config, quiet=True).run_dir
    scores = json.loads((run_dir / "eval.json").read_text())
    history, config_keys, exit_code = [], set(), None
    for record in wandb_records(run_dir):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.history.item})
        elif kind == "run":
            config_keys = {item.key for item in record.run.config.update}
        elif kind == "exit":
            exit_code = record.exit.exit_code
    assert exit_code == 0 and {"train", "method", "objective"} <= config_keys
    assert [row["train/loss"] for row in history if "train/loss" in row] == pytest.approx(
        [r["loss"] for r in read_metrics(run_dir) if r["kind"] == "train"])
    for kind, figures in (("final_eval", scores["after"]), ("eval_before", scores["before"])):
        logged = next(row for row in history if f"{kind}/loss" in row)
        assert {m: logged[f"{kind}/{m}"] for m in figures} == pytest.approx(figures)
    [files] = run_dir.glob("wandb/offline-run-*/files")
    assert {"eval.json", "run.json", "tuneforge-config.yaml", "metrics.jsonl"} <= {p.name for p in files.iterdir()}
    assert not any(p.is_symlink() for p in files.iterdir())
    assert not (run_dir / "tensorboard").exists() and not (run_dir / "mlflow").exists()


def closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # nothing listens there once the socket is closed


def test_an_mlflow_server_that_does_not_answer_is_refused_before_the_run_directory_is_made(tmp_path, tiny_model_dir,
                                                                                           monkeypatch):
    """Issue 30, finding 7: MLFLOW_TRACKING_URI at a closed port hung the run for 255 s, then a traceback."""
    import time

    from typer.testing import CliRunner

    from tests.test_user_errors import config_file
    from tuneforge.cli import app

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://user:secret@127.0.0.1:{closed_port()}")
    path = config_file(tmp_path, tiny_model_dir, output={"trackers": ["mlflow"]})
    started = time.perf_counter()
    result = CliRunner().invoke(app, ["train", str(path), "--quiet"])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "output.trackers" in result.output and "does not answer" in result.output and "fix:" in result.output
    assert "secret" not in result.output
    assert time.perf_counter() - started < 30 and not (tmp_path / "run").exists()


def test_wandb_logged_in_without_its_server_logs_offline(tmp_path, tiny_model_dir, monkeypatch, capsys):
    """Issue 30, finding 7: W&B with a key set on an offline node hung 98 s, then a traceback."""
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{closed_port()}")
    run_dir = train(tiny_config(tmp_path, tiny_model_dir, output={"trackers": ["wandb"]}, train={"max_steps": 2})
                    ).run_dir
    assert json.loads((run_dir / "run.json").read_text())["status"] == "complete"
    assert list(run_dir.glob("wandb/offline-run-*")) and "logging offline" in capsys.readouterr().out


def test_a_tracker_that_fails_mid_run_is_dropped_and_the_run_goes_on(tmp_path, tiny_model_dir, monkeypatch, capsys):
    """Issue 30, finding 7: a tracking server that goes away mid-run would have killed the run."""
    from tuneforge.runs import metrics

    calls = []

    class Flaky:
        def __init__(self, run_dir, resume_step, params):
            pass

        def log(self, step, numbers):
            calls.append(step)
            if len(calls) == 2:
                raise ConnectionError("the tracking server went away")

        def close(self, artifacts, failed):
            raise AssertionError("a dropped tracker is not closed")

    monkeypatch.setitem(metrics.TRACKERS, "tensorboard", Flaky)
    run_dir = train(tiny_config(tmp_path, tiny_model_dir, train={"max_steps": 4}, output={"trackers": ["tensorboard"]}),
                    quiet=True).run_dir
    assert json.loads((run_dir / "run.json").read_text())["status"] == "complete"
    assert len(calls) == 2 and len([r for r in read_metrics(run_dir) if r["kind"] == "train"]) == 4
    assert "tracker tensorboard failed (ConnectionError: the tracking server went away)" in capsys.readouterr().out
