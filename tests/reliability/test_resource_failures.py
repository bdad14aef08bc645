"""Promise 6: running out of memory or disk is a clean failure. The process gets a real allocation
failure (its address space capped in the middle of training) or a real ENOSPC (its output directory on a
tmpfs a few checkpoints big); it exits with code 2 and a message saying what to change, the newest
checkpoint is intact, no half-written checkpoint is left, and `--resume` (with the memory or disk back)
ends on the uninterrupted run's adapter, bitwise."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.reliability.conftest import adapter_of, run_config
from tests.reliability.killing import ENV, resume

# compares numbers from runs: `make test-bf16` runs it again with the precision forced to bf16
pytestmark = pytest.mark.numerical

# at the start of the nth training step, caps the address space 8 MiB above what is in use (a step needs more)
CAP_MEMORY = """
import resource, sys
from tuneforge.engine import loop
from tuneforge.cli import main

nth, calls, real = int(sys.argv[1]), {"n": 0}, loop.train_step
def capped(*args, **kwargs):
    calls["n"] += 1
    if calls["n"] == nth:
        size = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize:")) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (size + (8 << 20), resource.RLIM_INFINITY))
    return real(*args, **kwargs)
loop.train_step = capped
sys.argv = ["tuneforge", "train", *sys.argv[2:]]
main()
"""


def assert_left_resumable(checkpoints: Path, newest: str) -> None:
    from tuneforge.engine.checkpoint import verify

    assert sorted(p.name for p in checkpoints.glob("step-*"))[-1] == newest
    assert verify(checkpoints / newest) is None
    assert not list(checkpoints.glob(".tmp-*"))  # the failed write removed its staging directory


def test_out_of_memory_in_a_step(tmp_path, tiny_model_dir, reference):
    from tests.conftest import TEST_PRECISION

    if TEST_PRECISION == "bf16":
        # oneDNN's bf16 kernels on a CPU may dereference an allocation that failed under the cap: a segfault in
        # the forward (PYTHONFAULTHANDLER: models/parts.py final_hidden_states), not an error any caller can catch.
        # Seen on an AMD EPYC with avx512_bf16 at the commit before issue 29 too (1 of 2 runs), and 2 of 3 after.
        # The promise is shown in fp32 (`make test`); a bf16 run that meets a cap can be killed outright.
        pytest.skip("a failed allocation inside oneDNN's bf16 kernels can segfault the process (not catchable)")
    config = run_config(tmp_path, tiny_model_dir)
    # glibc maps every large tensor afresh and hands freed memory straight back (instead of keeping it for
    # reuse), so step 3's first large allocation meets the cap, as on a machine whose memory is full
    env = {**ENV, "GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=131072:glibc.malloc.trim_threshold=0:"
                                    "glibc.malloc.arena_max=1"}
    failed = subprocess.run([sys.executable, "-c", CAP_MEMORY, "3", str(config), "--quiet"], env=env,
                            capture_output=True, text=True, check=False)
    assert failed.returncode == 2, failed.stderr
    assert "out of memory in training step 3" in failed.stderr
    assert "lower train.batch_size (now 5)" in failed.stderr and "gradient_checkpointing" in failed.stderr
    assert "--resume continues from step-00000002, which is intact" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert_left_resumable(config.parent / "run" / "checkpoints", "step-00000002")
    resumed = resume(config)
    assert resumed.returncode == 0, resumed.stderr
    assert adapter_of(config.parent / "run") == adapter_of(reference.parent / "run")


def _can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                            "mount -t tmpfs -o size=1m tmpfs /mnt"], capture_output=True, check=False)
    return probe.returncode == 0


# inside a private mount namespace: a small tmpfs as the output disk, the run fails on it, the disk grows
# (space freed), the run resumes; what the test checks is copied out
DISK_FULL = """
set -u
mount -t tmpfs -o size=$SIZE tmpfs "$DISK"
"$PYTHON" -m tuneforge.cli train "$CONFIG" --quiet > "$OUT/first.out" 2> "$OUT/first.err"; echo $? > "$OUT/first.rc"
cp -r "$DISK/run/checkpoints" "$OUT/checkpoints"
mount -o remount,size=256m "$DISK"
"$PYTHON" -m tuneforge.cli train "$CONFIG" --quiet --resume > "$OUT/second.out" 2> "$OUT/second.err"
echo $? > "$OUT/second.rc"
cp "$DISK/run/adapter/adapter_model.safetensors" "$OUT/" 2>/dev/null || true
"""


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs unshare with user and mount namespaces to mount a tmpfs")
def test_disk_full_during_a_checkpoint_write(tmp_path, tiny_model_dir, reference):
    disk, out = tmp_path / "disk", tmp_path / "out"
    disk.mkdir()
    out.mkdir()
    config = run_config(tmp_path / "config", tiny_model_dir, output=disk / "run")
    # room for everything a run writes before its checkpoints, and two and a half checkpoints
    finished = reference.parent / "run"
    checkpoint = sum(_pages(f) for f in (finished / "checkpoints").iterdir() if f.is_dir() for f in f.iterdir())
    checkpoint //= len(list((finished / "checkpoints").iterdir()))
    before = sum(_pages(f) for f in finished.rglob("*") if f.is_file() and "checkpoints" not in f.parts
                 and "adapter" not in f.parts and f.name not in ("loss.png", "eval.json"))
    size = before + checkpoint * 5 // 2
    env = {**ENV, "SIZE": str(size), "DISK": str(disk), "CONFIG": str(config), "OUT": str(out),
           "PYTHON": sys.executable}
    subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "bash", "-c", DISK_FULL], env=env,
                   check=True, timeout=300)
    stderr = (out / "first.err").read_text()
    assert (out / "first.rc").read_text().strip() == "2", stderr
    assert "the disk is full" in stderr and "No space left on device" in stderr, stderr
    assert "lower train.keep_last (now 10)" in stderr and "Traceback" not in stderr
    newest = stderr.split("--resume continues from ")[1].split(",")[0]
    assert newest in ("step-00000001", "step-00000002")
    assert_left_resumable(out / "checkpoints", newest)
    assert (out / "second.rc").read_text().strip() == "0", (out / "second.err").read_text()
    assert (out / "adapter_model.safetensors").read_bytes() == adapter_of(reference.parent / "run")


def _pages(path: Path) -> int:
    return -(-path.stat().st_size // 4096) * 4096
