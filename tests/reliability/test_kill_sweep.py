"""Promise 1: crash anywhere, lose nothing. A run is killed with SIGKILL at random moments (and at chosen
points inside a checkpoint write), then resumed until it finishes; the final adapter is bitwise equal to
the uninterrupted run's. A kill before the first checkpoint leaves nothing to resume, and the run is simply
started again. CI runs the kills inside a checkpoint write (and `test_same_samples.py` kills after a
checkpoint); `make test-slow` runs the sweep over 20 random kill points."""

from __future__ import annotations

import random
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import tiny_config
from tests.reliability.conftest import run_config
from tests.reliability.killing import ENV, kill_at, resume, train_command

# compares numbers from runs: `make test-bf16` runs it again with the precision forced to bf16
pytestmark = pytest.mark.numerical

SECTIONS = {"train": {"max_steps": 30, "save_every": 1, "keep_last": 2, "batch_size": 4, "grad_accum": 2},
            "eval": {"metrics": ["loss"]}}


def write_config(directory: Path, model_dir: Path) -> Path:
    directory.mkdir()
    path = directory / "run.yaml"
    path.write_text(yaml.safe_dump(tiny_config(directory, model_dir, **SECTIONS)))
    return path


def adapter(config: Path) -> bytes:
    return (config.parent / "run" / "adapter" / "adapter_model.safetensors").read_bytes()


def finish(config: Path) -> str:
    """Resume until the run completes; returns how it went on."""
    result = resume(config)
    if result.returncode == 0:
        return "resumed"
    assert "no complete checkpoint" in result.stderr or "does not exist" in result.stderr, result.stderr
    subprocess.run(train_command(config, "output.overwrite=true"), env=ENV, check=True, capture_output=True)
    return "restarted"


def first_checkpoint(config: Path, process: subprocess.Popen) -> bool:
    """Wait until the run has written its first checkpoint; False if it ended first."""
    checkpoints = config.parent / "run" / "checkpoints"
    while process.poll() is None:
        if any(checkpoints.glob("step-*")):
            return True
        time.sleep(0.01)
    return False


@pytest.fixture(scope="module")
def sweep_reference(tmp_path_factory, tiny_model_dir) -> tuple[bytes, float, float]:
    """The uninterrupted run's adapter, its start-up time (to the first checkpoint) and its training time."""
    config = write_config(tmp_path_factory.mktemp("reference") / "full", tiny_model_dir)
    started = time.perf_counter()
    process = subprocess.Popen(train_command(config), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert first_checkpoint(config, process)
    checkpointed = time.perf_counter()
    assert process.wait() == 0
    return adapter(config), checkpointed - started, time.perf_counter() - checkpointed


@pytest.mark.parametrize(("step", "nth"), [("_fsync", 7), ("_fsync_dir", 3)],
                         ids=["files-written-no-manifest", "renamed-not-synced"])
def test_kill_inside_a_checkpoint_write(tmp_path, tiny_model_dir, reference, step, nth):
    config = run_config(tmp_path / "run-dir", tiny_model_dir, keep_last=2)
    killed = kill_at(f"tuneforge.engine.checkpoint:{step}", nth, config)
    assert killed.returncode == -9
    checkpoints = config.parent / "run" / "checkpoints"
    if step == "_fsync":  # killed while the files were being synced, before the manifest: a staging dir
        assert list(checkpoints.glob(".tmp-step-*"))
    assert finish(config) == "resumed"
    assert not list(checkpoints.glob(".tmp-step-*"))  # the unfinished write was cleaned up on resume
    assert adapter(config) == adapter(reference)


def sweep(tmp_path: Path, model_dir: Path, reference: tuple[bytes, float, float], points: int, seed: int) -> dict:
    """Kill at `points` random moments: one in five anywhere in the start-up, the rest anywhere in training
    (after the first checkpoint, where a resume has something to resume)."""
    rng, (wanted, startup, window) = random.Random(seed), reference
    counts = {"resumed": 0, "restarted": 0, "inside_a_write": 0}
    for point in range(points):
        config = write_config(tmp_path / f"kill-{point}", model_dir)
        while True:
            process = subprocess.Popen(train_command(config), env=ENV, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
            if rng.random() < 0.2:
                time.sleep(rng.uniform(0.2, startup))
            elif first_checkpoint(config, process):
                time.sleep(rng.uniform(0, window))
            process.kill()
            if process.wait() == -9 and not (config.parent / "run" / "adapter").exists():
                break
            shutil.rmtree(config.parent / "run", ignore_errors=True)  # finished before the kill: draw again
        counts["inside_a_write"] += bool(list((config.parent / "run" / "checkpoints").glob(".tmp-step-*")))
        counts[finish(config)] += 1
        assert adapter(config) == wanted, f"kill point {point}"
    return counts


@pytest.mark.slow
@pytest.mark.timeout(2400)  # about 30 s a kill point on 2 cores
def test_random_kill_sweep(tmp_path, tiny_model_dir, sweep_reference):
    counts = sweep(tmp_path, tiny_model_dir, sweep_reference, points=20, seed=2)
    print(f"20 kill points: {counts}")
    assert counts["resumed"] >= 10  # most kills land in training, so resuming is what is tested
