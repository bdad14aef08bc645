"""Promise 10: paths stay where they belong. A run writes and prunes only inside its run directory (a
symlink there leading out is refused), `output.overwrite` deletes only a directory tuneforge wrote (never a
root, home or working directory, one holding the run's inputs, or one holding other files), and a bundled
dataset name cannot climb out of the bundled directory. `tests/test_export.py` covers `export --overwrite`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import tiny_config
from tuneforge.api import train
from tuneforge.errors import DataError, RunDirError


def config_for(tmp_path: Path, model_dir: Path, output: Path | str, **output_keys) -> dict:
    return tiny_config(tmp_path, model_dir, output={"dir": str(output), **output_keys})


def fake_run(directory: Path) -> Path:
    directory.mkdir(parents=True)
    (directory / "run.json").write_text(json.dumps({"status": "training"}))
    return directory


def test_overwrite_refuses_a_directory_tuneforge_did_not_write(tmp_path, tiny_model_dir):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(RunDirError, match=r"did not write .*notes\.txt"):
        train(config_for(tmp_path, tiny_model_dir, mine, overwrite=True), quiet=True)
    assert (mine / "notes.txt").read_text() == "keep me"


def test_overwrite_refuses_the_working_directory_its_parents_and_home(tmp_path, tiny_model_dir, monkeypatch):
    work, home = fake_run(tmp_path / "a" / "work"), fake_run(tmp_path / "home")
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(home))
    for output in (".", str(tmp_path / "a"), str(home)):
        with pytest.raises(RunDirError, match="a root, home or working directory"):
            train(config_for(tmp_path, tiny_model_dir, output, overwrite=True), quiet=True)
    assert (work / "run.json").exists() and (home / "run.json").exists()


def test_overwrite_refuses_a_directory_holding_the_runs_data(tmp_path, tiny_model_dir):
    run_dir = fake_run(tmp_path / "run")
    config = config_for(tmp_path, tiny_model_dir, run_dir, overwrite=True)
    data = run_dir / "train.jsonl"
    data.write_text(Path(config["data"]["train"]).read_text())
    config["data"]["train"] = str(data)
    with pytest.raises(RunDirError, match="an input of this run"):
        train(config, quiet=True)
    assert data.exists()


@pytest.mark.parametrize("link", ["checkpoints", "checkpoints/step-00000002/trainable.safetensors"])
def test_a_symlink_out_of_the_run_directory_is_refused(tmp_path, tiny_model_dir, link):
    run_dir, elsewhere = fake_run(tmp_path / "run"), tmp_path / "elsewhere"
    (elsewhere / "step-00000001").mkdir(parents=True)  # what pruning or cleaning up would have deleted
    (elsewhere / ".tmp-step-00000003-1").mkdir()
    (elsewhere / "weights.safetensors").touch()
    target = elsewhere if link == "checkpoints" else elsewhere / "weights.safetensors"
    (run_dir / link).parent.mkdir(parents=True, exist_ok=True)
    (run_dir / link).symlink_to(target)
    with pytest.raises(RunDirError, match="outside the run directory"):
        train(config_for(tmp_path, tiny_model_dir, run_dir), resume=True, quiet=True)
    assert sorted(p.name for p in elsewhere.iterdir()) == [".tmp-step-00000003-1", "step-00000001",
                                                           "weights.safetensors"]


def test_a_symlink_inside_the_run_directory_is_allowed(tmp_path):
    from tuneforge.runs.paths import refuse_escaping_links

    run_dir = fake_run(tmp_path / "run")
    (run_dir / "latest").symlink_to(run_dir / "run.json")
    refuse_escaping_links(run_dir, "run directory")


@pytest.mark.parametrize("name", ["../quickstart/train", "/etc/passwd", "sub/train"])
def test_a_bundled_dataset_name_cannot_leave_the_bundled_directory(name):
    from tuneforge.data.sources import resolve_source

    with pytest.raises(DataError, match="no such bundled dataset"):
        resolve_source(f"quickstart:{name}")
