"""One run at a time per run directory.

The lock is an exclusive `flock` on a file under `$TUNEFORGE_HOME/locks`, named by the run directory's
absolute path: not inside the directory (`output.overwrite` replaces it) and not beside it (a run that
stops on a config or data error leaves nothing in the user's output tree). The kernel drops an flock when
its process dies, so the lock of a killed run is stale by construction and the next run simply takes it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tuneforge.config import tuneforge_home
from tuneforge.errors import RunDirError


def lock_path(run_dir: Path) -> Path:
    digest = hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:24]
    return tuneforge_home() / "locks" / f"{digest}.lock"


def is_locked(run_dir: Path) -> bool:
    """Whether a live process holds the run's lock now (a killed one's lock is released by the kernel)."""
    path = lock_path(run_dir)
    if not path.is_file():
        return False
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    path = lock_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise RunDirError(f"output directory {run_dir} is in use by another tuneforge run ({holder})\n  fix: "
                              "wait for that run to finish, or set another output.dir") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}, started "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}, writing {run_dir.resolve()}")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
