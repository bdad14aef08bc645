"""The run directory's owner (`tuneforge.runs`): how a run ends is what run.json says — complete, failed and why,
interrupted — and `--resume` continues a failed or interrupted run to the weights an uninterrupted one has."""

from __future__ import annotations

import json

import pytest

from tests.conftest import tiny_config
from tuneforge.api import train
from tuneforge.runs.index import status
from tuneforge.runs.layout import read_json
from tuneforge.runs.lock import run_lock


def stop_at_step(monkeypatch, step: int, exc: BaseException) -> None:
    """The loop raises `exc` when it is about to report step `step` (after its checkpoint of step - 1)."""
    import tuneforge.engine.loop as loop

    real = loop._report

    def report(inputs, state, *args):
        if state.step == step:
            raise exc
        return real(inputs, state, *args)

    monkeypatch.setattr(loop, "_report", report)


STEPS = {"max_steps": 3, "save_every": 1}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_model_dir):
    """The run the stopped and resumed ones must end as."""
    root = tmp_path_factory.mktemp("uninterrupted")
    return train(tiny_config(root, tiny_model_dir, train=STEPS), quiet=True).run_dir


@pytest.mark.parametrize(("exc", "said"), [(KeyboardInterrupt(), "interrupted"),
                                           (RuntimeError("disk on fire"), "failed")])
def test_a_run_says_how_it_ended_and_resume_finishes_it(tmp_path, tiny_model_dir, uninterrupted, monkeypatch, exc,
                                                        said):
    config = tiny_config(tmp_path, tiny_model_dir, train=STEPS)
    stop_at_step(monkeypatch, 3, exc)
    with pytest.raises(type(exc)):
        train(config, quiet=True)
    record = read_json(tmp_path / "run" / "run.json")
    assert record["status"] == said and record["fingerprint"]["data_sha256"]  # what it was stays recorded
    assert ("error" in record) == (said == "failed")
    if said == "failed":
        assert record["error"] == {"type": "RuntimeError", "message": "disk on fire"}
    monkeypatch.undo()
    resumed = train(config, resume=True, quiet=True)
    assert resumed.steps == 3 and read_json(resumed.run_dir / "run.json")["status"] == "complete"
    adapter = "adapter/adapter_model.safetensors"
    assert (resumed.run_dir / adapter).read_bytes() == (uninterrupted / adapter).read_bytes()


def test_a_run_recorded_as_training_that_no_process_holds_was_interrupted(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps({"status": "training"}))  # as a kill -9 leaves it
    assert status(run_dir) == "interrupted"
    with run_lock(run_dir):  # a live run holds its lock
        assert status(run_dir) == "training"
    (run_dir / "run.json").write_text(json.dumps({"status": "complete"}))
    assert status(run_dir) == "complete" and status(tmp_path / "nothing") is None


def test_a_stop_signal_ends_the_run_as_interrupted(tmp_path, tiny_model_dir):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import yaml

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(tiny_config(tmp_path, tiny_model_dir, train={"max_steps": 10_000, "save_every": 5})))
    process = subprocess.Popen([sys.executable, "-m", "tuneforge", "train", str(path), "--quiet"], text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.is_file() and '"kind": "train"' in metrics.read_text()) and time.time() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)  # what a service manager or a web UI's stop button sends
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, out + err
    assert "--resume" in err and "Traceback" not in err
    assert read_json(tmp_path / "run" / "run.json")["status"] == "interrupted"
