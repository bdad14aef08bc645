"""Run `tuneforge train` in a subprocess that SIGKILLs itself at the n-th call of a chosen function: a
kill -9 at an exact point (inside a checkpoint write, between two micro-batches of a window)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
_DRIVER = """
import importlib, os, signal, sys
module_name, attribute = sys.argv[1].split(":")
owner = importlib.import_module(module_name)
*path, name = attribute.split(".")
for part in path:
    owner = getattr(owner, part)
real, nth, calls = getattr(owner, name), int(sys.argv[2]), {"n": 0}
def killer(*args, **kwargs):
    calls["n"] += 1
    if calls["n"] == nth:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)
setattr(owner, name, killer)
from tuneforge.cli import main
sys.argv = ["tuneforge", *sys.argv[3:]]
main()
"""


def train_command(config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tuneforge.cli", "train", str(config), "--quiet", *extra]


def kill_at(target: str, nth: int, config: Path, command: str = "train", *extra: str) -> subprocess.CompletedProcess:
    """`tuneforge COMMAND config` (train it, or sweep ...), killed with SIGKILL just before the nth call of `target`
    ("module:attribute.path")."""
    return subprocess.run([sys.executable, "-c", _DRIVER, target, str(nth), command, str(config), "--quiet", *extra],
                          env=ENV, capture_output=True, text=True, check=False)


def resume(config: Path) -> subprocess.CompletedProcess:
    """`tuneforge train CONFIG --resume`, run in this process through the command line's own entry (what is
    tested is the resumed state, not a process start: a fresh interpreter costs ~8 s of imports)."""
    from typer.testing import CliRunner

    from tuneforge.cli import app

    result = CliRunner().invoke(app, ["train", str(config), "--quiet", "--resume"])
    return subprocess.CompletedProcess(["tuneforge", "train", str(config), "--resume"], result.exit_code,
                                       result.stdout, result.stderr)
