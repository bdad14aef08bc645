"""Digests of model files: what names a model's weights, so that anything derived from them (a run's identity, a
teacher's cached outputs) changes when they do.

A file's sha256 is remembered under $TUNEFORGE_HOME/cache/digests, keyed by its path, size, modification time
and inode (as git's index does): a model of 500 MB is read once, not at every run, and a file replaced, edited or
cut short gets a new key and is read again."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from tuneforge.config import ModelConfig, tuneforge_home

WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.gguf")
# the files besides the weights that decide a model's outputs (rope settings, the head's classes)
DECIDING_FILES = ("config.json",)


def sha256_of(path: Path) -> str:
    """The file's digest, read through one small buffer: it also runs after an out-of-memory error, to name the
    intact checkpoint, when a fresh megabyte per read may not be had."""
    digest, buffer = hashlib.sha256(), bytearray(1 << 16)
    view = memoryview(buffer)
    with Path(path).open("rb", buffering=0) as handle:
        while size := handle.readinto(buffer):
            digest.update(view[:size])
    return digest.hexdigest()


def remembered_sha256(path: Path) -> str:
    """`sha256_of`, remembered while the file's path, size, modification time and inode stay the same."""
    path = Path(path)
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ino}".encode()).hexdigest()
    memo = tuneforge_home() / "cache" / "digests" / key[:40]
    try:
        return memo.read_text().strip()
    except OSError:
        pass
    digest = sha256_of(path)
    memo.parent.mkdir(parents=True, exist_ok=True)
    fd, scratch = tempfile.mkstemp(prefix=".digest-", dir=memo.parent)
    with os.fdopen(fd, "w") as out:
        out.write(digest)
    os.replace(scratch, memo)
    return digest


def directory_digest(directory: Path) -> str:
    """One digest over a model directory's weight files and the files that decide its outputs, by name."""
    directory = Path(directory)
    files = sorted({p for pattern in WEIGHT_PATTERNS for p in directory.glob(pattern)}
                   | {directory / name for name in DECIDING_FILES if (directory / name).is_file()})
    named = {p.name: remembered_sha256(p) for p in files}
    return hashlib.sha256(json.dumps(named, sort_keys=True).encode()).hexdigest()


def model_digest(cfg: ModelConfig) -> str:
    """What names a base model's weights: the digest of its directory ('default', the bundled encoder, a local
    directory), or for a hub id the revision of its local copy (the hub names a revision by its content)."""
    from tuneforge.models.load import resolve_model_path

    path = resolve_model_path(cfg)
    if Path(path).is_dir():
        return directory_digest(Path(path))
    return "hub:" + path + "@" + (_hub_revision(path) or "unknown")


def _hub_revision(repo_id: str) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "config.json")
    except (ValueError, OSError):  # an id the hub library refuses to parse: no local copy to name
        return None
    return Path(found).parent.name if isinstance(found, str) else None
