"""Promise 9: weights load from safetensors only. A model directory whose weights are a pickle that runs code
when unpickled is refused with a clear message, and its payload never runs; a run's checkpoints and data
cache hold no pickle at all."""

from __future__ import annotations

import pickle
import shutil

import pytest

from tests.conftest import tiny_config
from tuneforge.api import train
from tuneforge.errors import ModelError


class Payload:
    """Unpickling this creates the marker file: proof that code ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_malicious_pickle_is_refused_and_never_runs(tmp_path, tiny_model_dir):
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    for weights in model_dir.glob("*.safetensors"):
        weights.unlink()
    marker = tmp_path / "pwned"
    (model_dir / "pytorch_model.bin").write_bytes(pickle.dumps(Payload(str(marker))))
    config = tiny_config(tmp_path, model_dir, train={"max_steps": 1})
    with pytest.raises(ModelError, match="only pickled weights") as err:
        train(config, quiet=True)
    assert "safetensors" in str(err.value) and "fix:" in str(err.value)
    assert not marker.exists()  # the payload never ran
    assert not (tmp_path / "run").exists()


def test_a_run_writes_no_pickle(tmp_path, tiny_model_dir):
    result = train(tiny_config(tmp_path, tiny_model_dir, train={"max_steps": 2, "save_every": 1}), quiet=True)
    suffixes = {p.suffix for p in result.run_dir.rglob("*") if p.is_file()}
    assert not suffixes & {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}, suffixes
