"""Out of memory and out of disk, turned into messages that say what failed, what to change and where the
run can continue from. The checkpoint writer never deletes an older checkpoint before a newer one is in
place, and a failed write removes its own staging directory, so the newest intact checkpoint is still
there when these messages name it."""

from __future__ import annotations

import errno
import os
import shutil
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from tuneforge.config import TrainConfig
from tuneforge.engine import checkpoint
from tuneforge.errors import TrainingError

# no space, over quota, over the file-size limit: all mean "this disk cannot take the run's files"
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
# what the CPU allocator and CUDA say when an allocation fails (the CPU one arrives as a plain RuntimeError)
_OOM_TEXT = ("can't allocate memory", "not enough memory", "out of memory", "Cannot allocate memory")


class ResourceError(TrainingError):
    """The machine ran out of memory or disk; the message says what to change."""


# oneDNN (bf16 matmuls on the CPU) reports a failed allocation only as this; other causes are possible, so it
# counts as out of memory when memory is indeed short at that moment
_ONEDNN_TEXT = "could not create a primitive"


def out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    if not isinstance(exc, RuntimeError):
        return False
    return any(text in str(exc) for text in _OOM_TEXT) or (_ONEDNN_TEXT in str(exc) and _memory_is_short())


def _memory_is_short(probe_bytes: int = 64 << 20) -> bool:
    """Whether 64 MiB more can be had now (the failed step's tensors are freed by the time this runs)."""
    try:
        bytearray(probe_bytes)
    except MemoryError:
        return True
    return False


def out_of_disk(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return exc.errno in _NO_SPACE
    # safetensors' writer (Rust) raises its own error type carrying the OS error number in its text
    return any(f"(os error {number})" in str(exc) for number in _NO_SPACE)


@contextmanager
def resource_guard(doing: str, checkpoints: Path, cfg: TrainConfig) -> Iterator[None]:
    """Inside: an out-of-memory or disk-full error becomes a ResourceError saying what to change."""
    try:
        yield
    except Exception as exc:
        if isinstance(exc, ResourceError) or not (out_of_memory(exc) or out_of_disk(exc)):
            raise
        # the failed step's tensors live on in the traceback's frames; free them before checking checkpoints
        traceback.clear_frames(exc.__traceback__)
        raise ResourceError(_message(exc, doing, checkpoints, cfg)) from exc


def _message(exc: BaseException, doing: str, checkpoints: Path, cfg: TrainConfig) -> str:
    newest, _ = checkpoint.latest_checkpoint(checkpoints)
    then = (f"then --resume continues from {newest.name}, which is intact" if newest is not None else
            "no checkpoint was written yet, so the run starts again (output.overwrite=true)")
    if out_of_memory(exc):
        effective = cfg.batch_size * cfg.grad_accum
        detail = str(exc).splitlines()[0][:200]
        return (f"out of memory {doing}: {detail}\n  fix: lower train.batch_size (now {cfg.batch_size}) and raise "
                f"train.grad_accum to keep the effective batch of {effective}, set train.gradient_checkpointing: "
                f"true, lower data.max_seq_len, or train with method qlora; {then}")
    filename, reason = getattr(exc, "filename", None), getattr(exc, "strerror", None) or _os_error_text(exc)
    where = Path(filename) if filename else checkpoints.parent
    existing = next((p for p in (where, *where.parents) if p.exists()), Path("."))
    free = shutil.disk_usage(existing).free / 2**20
    size = ""
    if newest is not None:
        size = f" (a checkpoint takes {sum(f.stat().st_size for f in newest.iterdir()) / 2**20:.1f} MiB)"
    return (f"the disk is full {doing}: {where}: {reason} ({free:.0f} MiB free there)\n  fix: free space on "
            f"that disk (or move the run directory to one with room and set output.dir to it), lower "
            f"train.keep_last (now {cfg.keep_last}){size}; {then}")


def _os_error_text(exc: BaseException) -> str:
    """'No space left on device' out of '... I/O error: No space left on device (os error 28)'."""
    text = str(exc)
    number = next(n for n in _NO_SPACE if f"(os error {n})" in text)
    return os.strerror(number)
