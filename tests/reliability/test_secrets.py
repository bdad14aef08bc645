"""Promise 11: with HF_TOKEN and WANDB_API_KEY set, neither appears in a run's output, logs, saved config or
any file of its run directory. The same run shows promise 17's quiet console: tuneforge's lines only (no
bitsandbytes notice, no progress bars), unless TUNEFORGE_LIBRARY_LOGS=1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import tiny_config

SENTINEL = "hf_SENTINELsecretTOKEN0123456789"


def test_tokens_never_reach_output_or_run_directory(tmp_path, tiny_model_dir):
    config = tiny_config(tmp_path, tiny_model_dir, train={"max_steps": 2, "save_every": 1},
                         output={"tensorboard": True})
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**{k: v for k, v in os.environ.items() if k != "TUNEFORGE_LIBRARY_LOGS"}, "HF_TOKEN": SENTINEL,
           "HUGGING_FACE_HUB_TOKEN": SENTINEL, "WANDB_API_KEY": SENTINEL, "PYTHONPATH": str(Path(__file__).parents[2])}
    result = subprocess.run([sys.executable, "-m", "tuneforge.cli", "train", str(path), "--quiet"], env=env,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert SENTINEL not in result.stdout and SENTINEL not in result.stderr
    assert result.stderr == "" and "it/s]" not in result.stdout  # tuneforge's lines only
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert len(files) > 10  # adapter, tokenizer, checkpoints, metrics, TensorBoard events, config
    for file in files:
        assert SENTINEL.encode() not in file.read_bytes(), file
