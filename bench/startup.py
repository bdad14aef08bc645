"""Time from typing `tuneforge train` to the first optimizer step, with the default model cached.

    python -m bench.startup

Runs the quickstart config twice in fresh processes (the second run finds its tokenized data cached)
and reads when the first step began from metrics.jsonl (rows are stamped when a step ends).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def time_to_first_step(out: Path) -> float:
    command = [sys.executable, "-m", "tuneforge.cli", "train", str(ROOT / "examples" / "quickstart.yaml"),
               "train.max_steps=1", "eval.compare_base=false", "eval.metrics=[loss]", "eval.max_examples=4",
               f"output.dir={out}", "output.overwrite=true", "--quiet"]
    started = time.time()
    subprocess.run(command, check=True, capture_output=True)
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    return first["time"] - first["step_time_s"] - started


def main() -> None:
    from tuneforge.models.default import default_model_dir

    default_model_dir()  # converted once, outside the measurement
    out = Path(tempfile.mkdtemp(prefix="tuneforge-startup-"))
    try:
        for label in ("first run", "rerun (tokenized data cached)"):
            print(f"{label}: first optimizer step {time_to_first_step(out / 'run'):.1f} s after the command")
    finally:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
