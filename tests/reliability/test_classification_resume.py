"""Promises 1 and 4 for a classification run: killed with SIGKILL between two micro-batches of a window and
resumed, a LoRA sentiment classifier on a tiny BERT trains the same records at every step as the uninterrupted
run and ends on the same adapter and head, bitwise; a plateau schedule's rate cuts are part of what resumes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import classification_config
from tests.reliability.killing import ENV, kill_at, resume, train_command

pytestmark = pytest.mark.numerical

# a rate too small to change which class wins: accuracy plateaus from the first evaluation, so the rate is cut at
# steps 4 and 6, and the kill (in step 6) lands after the first cut
TRAIN = {"max_steps": 8, "batch_size": 4, "grad_accum": 2, "save_every": 2, "keep_last": 5, "eval_every": 2,
         "schedule": "plateau", "early_stopping_metric": "accuracy", "lr": 1e-6}


def write(directory: Path, model_dir: Path) -> Path:
    directory.mkdir(parents=True)
    path = directory / "run.yaml"
    path.write_text(yaml.safe_dump(classification_config(directory, model_dir, train=TRAIN)))
    return path


def steps(config: Path) -> list[tuple[int, list[int], float]]:
    from tuneforge.runs.layout import read_metrics

    return [(r["step"], r["samples"], r["lr"]) for r in read_metrics(config.parent / "run") if r["kind"] == "train"]


def adapter(config: Path) -> bytes:
    return (config.parent / "run" / "adapter" / "adapter_model.safetensors").read_bytes()


def test_a_killed_classification_run_resumes_bitwise(tmp_path, tiny_bert_dir):
    import subprocess

    reference = write(tmp_path / "reference", tiny_bert_dir)
    subprocess.run(train_command(reference), env=ENV, check=True, capture_output=True)
    config = write(tmp_path / "killed", tiny_bert_dir)
    killed = kill_at("torch:Tensor.backward", 11, config)  # step 6's first micro-batch; checkpoint of step 4 left
    assert killed.returncode == -9, killed.stderr
    resumed = resume(config)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from step-00000004" in resumed.stdout
    assert steps(config) == steps(reference)
    assert [lr for _, _, lr in steps(reference)] == pytest.approx([1e-6] * 4 + [0.5e-6] * 2 + [0.25e-6] * 2)
    assert adapter(config) == adapter(reference)
    assert (config.parent / "run" / "labels.json").read_text() == (reference.parent / "run" / "labels.json").read_text()
