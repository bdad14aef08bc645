"""Promise 4: the same samples after a resume. Every train row of metrics.jsonl names the records its step
trained on, in order; a run killed with SIGKILL (between two micro-batches of an accumulation window, or at
an epoch boundary) and resumed trains the same records at every step as the uninterrupted run, and ends on
the same adapter, bitwise.

The runs are the shared reference's (tests/reliability/conftest.py), so the cuts below also cross a short
window and a reshuffle."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.conftest import adapter_of, run_config
from tests.reliability.killing import kill_at, resume

# compares numbers from runs: `make test-bf16` runs it again with the precision forced to bf16
pytestmark = pytest.mark.numerical

BACKWARD = "torch:Tensor.backward"  # called once per micro-batch


def steps(config: Path) -> list[tuple[int, int, list[int]]]:
    from tuneforge.runs.layout import read_metrics

    return [(r["step"], r["epoch"], r["samples"]) for r in read_metrics(config.parent / "run") if r["kind"] == "train"]


def test_every_step_names_its_samples_and_epochs_reshuffle(reference):
    rows = steps(reference)
    assert [(step, epoch) for step, epoch, _ in rows] == [(1, 0), (2, 0), (3, 0), (4, 1), (5, 1), (6, 1), (7, 2)]
    epoch0 = [s for _, epoch, samples in rows if epoch == 0 for s in samples]
    epoch1 = [s for _, epoch, samples in rows if epoch == 1 for s in samples]
    assert sorted(epoch0) == sorted(epoch1) == list(range(24))  # each record once an epoch
    assert epoch0 != epoch1  # in a new order


# (save_every, the backward call killed before, the newest checkpoint left, what the cut is)
CUTS = {
    "inside-a-window-then-across-the-epoch": (2, 7, "step-00000002"),  # step 4's 2nd micro-batch; replays 3, 4
    "at-the-epoch-boundary": (3, 6, "step-00000003"),  # checkpoint at the epoch's end; killed before epoch 1's first
}


@pytest.mark.parametrize("cut", CUTS)
def test_resume_trains_the_same_samples_at_every_step(tmp_path, tiny_model_dir, reference, cut):
    save_every, nth, newest = CUTS[cut]
    config = run_config(tmp_path / "cut", tiny_model_dir, save_every=save_every)
    killed = kill_at(BACKWARD, nth, config)
    assert killed.returncode == -9, killed.stderr
    checkpoints = sorted(p.name for p in (config.parent / "run" / "checkpoints").glob("step-*"))
    assert checkpoints[-1] == newest and [s for s, _, _ in steps(config)] == [1, 2, 3]
    resumed = resume(config)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {newest}" in resumed.stdout
    assert steps(config) == steps(reference)
    assert adapter_of(config.parent / "run") == adapter_of(reference.parent / "run")
