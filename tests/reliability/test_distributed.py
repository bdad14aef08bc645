"""Data-parallel training in two processes (torchrun's launcher, gloo on the CPU) against the shared
one-process reference run: the same per-step losses and the same adapter, resume across a kill -9 with a
different number of processes, and a process that fails or stalls stopping the run with a clear error.

The reference's 7 steps of 2 micro-batches of 5 (dropout 0.1) include a short window at each epoch's end,
which leaves the second process without a micro-batch of its own; the seeded dropout masks follow the
micro-batch, not the process, so even those agree. Tolerance: 1e-5 on losses, 1e-6 on adapter weights (fp32:
two processes sum the same gradients in another order)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.reliability.conftest import run_config
from tests.reliability.killing import ENV

# two processes need two devices: a CPU-only machine (gloo) or two GPUs (NCCL); one GPU cannot host both
pytestmark = pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.device_count() < 2,
                                reason="two processes need two GPUs here (or a CPU-only machine)")

# a process of the run does what the environment tells it to, at start-up (sitecustomize runs in every Python
# process that has it on its path): exit at once, or SIGKILL itself / stop at the nth training step
_SITECUSTOMIZE = """
import os, signal
if os.environ.get("RANK") == os.environ.get("TF_TEST_RANK"):
    if os.environ.get("TF_TEST_EXIT"):
        os._exit(int(os.environ["TF_TEST_EXIT"]))
    import tuneforge.engine.loop as loop
    real, calls = loop.train_step, {"n": 0}
    def train_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == int(os.environ["TF_TEST_AT_STEP"]):
            os.kill(os.getpid(), getattr(signal, os.environ["TF_TEST_SIGNAL"]))
        return real(*args, **kwargs)
    loop.train_step = train_step
"""


def launch(config: Path, tmp_path: Path, *extra: str, timeout: float = 120, **fault: str) -> tuple:
    """`tuneforge train CONFIG --nproc 2` in a subprocess, with a fault for one process; (result, seconds)."""
    env = dict(ENV)
    if fault:
        hooks = tmp_path / "hooks"
        hooks.mkdir(exist_ok=True)
        (hooks / "sitecustomize.py").write_text(_SITECUSTOMIZE)
        env["PYTHONPATH"] = f"{hooks}{os.pathsep}{env['PYTHONPATH']}"
        env.update({f"TF_TEST_{key.upper()}": str(value) for key, value in fault.items()})
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "tuneforge", "train", str(config), "--quiet", "--nproc", "2",
                             *extra], env=env, capture_output=True, text=True, timeout=timeout, check=False)
    return result, time.perf_counter() - started


def resume_run(config: Path, run_dir: Path) -> subprocess.CompletedProcess:
    """`tuneforge train CONFIG output.dir=RUN --resume` in one process, in this one (through the CLI's entry)."""
    from typer.testing import CliRunner

    from tuneforge.cli import app

    result = CliRunner().invoke(app, ["train", str(config), f"output.dir={run_dir}", "--quiet", "--resume"])
    return subprocess.CompletedProcess(["tuneforge"], result.exit_code, result.stdout, result.stderr)


def losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["loss"] for row in rows if row["kind"] == "train"}


def assert_same_training(run_dir: Path, reference_dir: Path) -> None:
    got, want = losses(run_dir), losses(reference_dir)
    assert sorted(got) == sorted(want)
    for step in want:
        assert got[step] == pytest.approx(want[step], abs=1e-5), step
    ours, theirs = (load_file(d / "adapter" / "adapter_model.safetensors") for d in (run_dir, reference_dir))
    assert ours.keys() == theirs.keys()
    for name in theirs:
        torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=1e-6)


# FSDP's steps before the kill below are compared with the reference too, so its own run is in test-slow only
@pytest.mark.heavy  # two torchrun processes: CI runs it in make test-heavy
@pytest.mark.parametrize("how", ["ddp", pytest.param("fsdp", marks=pytest.mark.slow)])
def test_two_processes_train_as_one(reference, tmp_path, how):
    config = run_config(tmp_path, Path(yaml.safe_load(reference.read_text())["model"]), output=tmp_path / "run")
    result, _ = launch(config, tmp_path, f"train.distributed={how}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert_same_training(tmp_path / "run", reference.parent / "run")
    assert json.loads((tmp_path / "run" / "run.json").read_text())["processes"] == 2
    assert result.stdout.count("run directory:") == 1  # one process reports
    assert "Traceback" not in result.stderr


def stopped_at_step_3(reference: Path, run_dir: Path) -> None:
    """The reference run as if it had stopped after step 3 in one process (its own checkpoints)."""
    shutil.copytree(reference.parent / "run", run_dir)
    for checkpoint in (run_dir / "checkpoints").iterdir():
        if checkpoint.name > "step-00000003":
            shutil.rmtree(checkpoint)
    status = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps({**status, "status": "training"}))


@pytest.mark.heavy  # three torchrun launches: CI runs it in make test-heavy
def test_resume_in_two_then_kill_one_then_resume_in_one(reference, tmp_path):
    """Across world sizes and a kill: a run stopped after step 3 in one process resumes in two under FSDP (each
    takes its shard of the saved weights and optimizer state); kill -9 of the second process at its 2nd step
    (step 5) stops both within seconds, naming it; the checkpoint the two wrote (gathered from their shards)
    resumes in one process, and the run ends as the uninterrupted reference, step for step."""
    run_dir = tmp_path / "run"
    stopped_at_step_3(reference, run_dir)
    result, seconds = launch(reference, tmp_path, "--resume", f"output.dir={run_dir}", "train.distributed=fsdp",
                             rank=1, at_step=2, signal="SIGKILL")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "resumed from step-00000003" in result.stdout
    assert "training process 1" in result.stderr and "SIGKILL" in result.stderr
    assert "--resume" in result.stderr and "Traceback" not in result.stderr
    assert seconds < 60
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir())[-1] == "step-00000004"  # written by two
    resumed = resume_run(reference, run_dir)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resumed from step-00000004" in resumed.stdout
    assert_same_training(run_dir, reference.parent / "run")


@pytest.mark.slow
def test_resume_a_one_process_run_in_two(reference, tmp_path):
    """A run stopped after step 3 in one process continues in two under DDP."""
    run_dir = tmp_path / "run"
    stopped_at_step_3(reference, run_dir)
    result, _ = launch(reference, tmp_path, "--resume", f"output.dir={run_dir}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "resumed from step-00000003" in result.stdout
    assert_same_training(run_dir, reference.parent / "run")


def test_a_process_failing_at_start_stops_the_run(reference, tmp_path):
    config = run_config(tmp_path, Path(yaml.safe_load(reference.read_text())["model"]), output=tmp_path / "run")
    result, seconds = launch(config, tmp_path, rank=1, exit=3)
    assert result.returncode == 2
    assert "training process 1" in result.stderr and "exited with code 3" in result.stderr
    assert "Traceback" not in result.stderr
    assert seconds < 30


def test_a_user_error_found_by_the_processes_exits_2_with_one_message(reference, tmp_path):
    """Issue 30, finding 9: the located error was printed, then rank 0 aborted (SIGABRT: exiting with its process
    group live) and torchrun printed its own traceback."""
    config = run_config(tmp_path, Path(yaml.safe_load(reference.read_text())["model"]), output=tmp_path / "run")
    result, _ = launch(config, tmp_path, "train.grad_accum=1")
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("grad_accum is 1 but 2 processes share") == 1 and "fix:" in result.stderr
    assert "Traceback" not in result.stderr and "terminate called" not in result.stderr
    assert "killed by" not in result.stderr


@pytest.mark.slow
def test_a_stalled_process_is_an_error_within_the_timeout(reference, tmp_path):
    """SIGSTOP (not a death: the connection stays open) of one process: the other names the stall within
    train.collective_timeout_s, not after a 30-minute watchdog."""
    config = run_config(tmp_path, Path(yaml.safe_load(reference.read_text())["model"]), output=tmp_path / "run")
    result, seconds = launch(config, tmp_path, "train.collective_timeout_s=5", rank=1, at_step=4, signal="SIGSTOP")
    assert result.returncode == 2
    assert "did not answer within 5 s" in result.stderr
    assert seconds < 60
