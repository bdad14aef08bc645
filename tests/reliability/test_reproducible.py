"""Promise 12: the same config and seed give bitwise-identical trained weights on CPU, and run.json records
their sha256 so two runs can be compared without their files."""

from __future__ import annotations

import hashlib
import json

import pytest

from tests.conftest import tiny_config
from tuneforge.api import train

# compares numbers from runs: `make test-bf16` runs it again with the precision forced to bf16
pytestmark = pytest.mark.numerical


def recorded(run_dir) -> dict[str, str]:
    return json.loads((run_dir / "run.json").read_text())["weights_sha256"]


def test_same_seed_same_weights_and_recorded_digest(tmp_path, tiny_model_dir):
    runs = [train(tiny_config(tmp_path, tiny_model_dir, train={"max_steps": 3, "seed": seed},
                              output={"dir": str(tmp_path / name)}), quiet=True).run_dir
            for name, seed in (("a", 7), ("b", 7), ("c", 8))]
    first, second, other = (recorded(r) for r in runs)
    assert first and first == second and first != other
    assert all(name.startswith("adapter/") for name in first)  # the weights, not the checkpoints
    for name, digest in first.items():
        assert hashlib.sha256((runs[0] / name).read_bytes()).hexdigest() == digest
