"""One uninterrupted reference run shared by the reliability tests that kill, starve or cut a run and then
compare its resumed end with the reference's (each used to train its own: about 20 s of the suite).

24 records in micro-batches of 5 give 5 micro-batches an epoch; with 2 a window an epoch is 3 steps, the
third holding one micro-batch, so a 7-step run crosses a short window and two reshuffles."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import tiny_config
from tests.reliability.killing import ENV, train_command

TRAIN = {"max_steps": 7, "batch_size": 5, "grad_accum": 2, "save_every": 1, "keep_last": 10}


def run_config(directory: Path, model_dir: Path, output: Path | None = None, **train: int) -> Path:
    """A run config in `directory` (created), the shared training settings with `train` overriding (checkpoint
    settings only: anything else would change the weights the reference ends on)."""
    assert set(train) <= {"save_every", "keep_last"}
    directory.mkdir(parents=True, exist_ok=True)
    config = tiny_config(directory, model_dir, train={**TRAIN, **train}, eval={"metrics": ["loss"]})
    if output is not None:
        config["output"]["dir"] = str(output)
    path = directory / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def adapter_of(run_dir: Path) -> bytes:
    return (run_dir / "adapter" / "adapter_model.safetensors").read_bytes()


@pytest.fixture(scope="session")
def reference(tmp_path_factory, tiny_model_dir) -> Path:
    """The config of the finished uninterrupted run (its run directory is `config.parent / "run"`)."""
    config = run_config(tmp_path_factory.mktemp("reference") / "full", tiny_model_dir)
    subprocess.run(train_command(config), env=ENV, check=True, capture_output=True)
    return config
