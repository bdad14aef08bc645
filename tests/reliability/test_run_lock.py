"""Promise 13: two runs never write one run directory. The second refuses, naming the first, before it loads
or writes anything; the lock of a run killed with SIGKILL is stale and the next run takes it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import tiny_config
from tuneforge.api import train
from tuneforge.errors import RunDirError

HOLD = """
import sys, time
from pathlib import Path
from tuneforge.runs.lock import run_lock
with run_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(120)
"""


def hold_lock(run_dir: Path) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_run_on_the_same_directory_refuses(tmp_path, tiny_model_dir):
    config = tiny_config(tmp_path, tiny_model_dir, train={"max_steps": 1})
    holder = hold_lock(tmp_path / "run")
    try:
        with pytest.raises(RunDirError, match=rf"in use by another tuneforge run \(pid {holder.pid} on") as err:
            train(config, quiet=True)
        assert "fix:" in str(err.value)
        assert not (tmp_path / "run").exists()  # refused before writing anything
        # another directory is not affected
        other = tiny_config(tmp_path, tiny_model_dir, train={"max_steps": 1}, output={"dir": str(tmp_path / "b")})
        assert train(other, quiet=True).steps == 1
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_runs_lock_is_stale(tmp_path, tiny_model_dir):
    holder = hold_lock(tmp_path / "run")
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    result = train(tiny_config(tmp_path, tiny_model_dir, train={"max_steps": 1}), quiet=True)
    assert result.steps == 1 and (result.run_dir / "adapter").is_dir()
