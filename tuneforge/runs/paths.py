"""Where tuneforge may write and what it may delete. A run writes only inside its run directory, and a
symlink there that leads out of it is refused (a symlinked `checkpoints` would let pruning delete another
directory's files). Replacing a directory (`output.overwrite`, `export --overwrite`) deletes it, so only a
directory tuneforge wrote is replaced: never a filesystem root, the home directory, the working directory or
one above it, a directory holding the run's own inputs, or one without tuneforge's marker file."""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tuneforge.errors import RunDirError


def refuse_escaping_links(root: Path, what: str) -> None:
    """Every symlink under `root` must lead to a place inside it."""
    if not root.is_dir():
        return
    inside = root.resolve()
    for path in _walk(root):
        if path.is_symlink() and not path.resolve().is_relative_to(inside):
            raise RunDirError(f"{path} is a symlink to {path.resolve()}, outside the {what} {root}; tuneforge "
                              "writes and prunes files there and will not follow it\n  fix: remove the link; to "
                              "keep the run on another disk, set output.dir to a directory on that disk")


def refuse_unsafe_replace(directory: Path, marker: str, what: str, inputs: Iterable[str | Path] = ()) -> None:
    """Before `directory` is deleted to be written again: it must be a directory tuneforge wrote (it holds
    `marker`, or nothing), not a root, home or working directory, and hold none of the run's inputs."""
    if directory.is_symlink():
        raise RunDirError(f"{what} {directory} is a symlink; replacing it would delete what it points to\n  fix: "
                          "set the path to the real directory, or remove the link")
    if not directory.exists():
        return
    resolved = directory.resolve()
    protected = {Path(resolved.anchor), Path.home().resolve()}
    if resolved in protected or Path.cwd().resolve().is_relative_to(resolved):
        raise RunDirError(f"{what} {directory} is {resolved}, a root, home or working directory; replacing it "
                          "would delete everything in it\n  fix: choose a directory of its own for the output")
    for item in inputs:
        if Path(item).resolve().is_relative_to(resolved):
            raise RunDirError(f"{what} {directory} holds {item}, an input of this run; replacing it would delete "
                              "it\n  fix: move the input out of it, or choose another output directory")
    entries = [p.name for p in directory.iterdir()]
    if entries and marker not in entries:
        raise RunDirError(f"{what} {directory} holds files tuneforge did not write (no {marker}; it holds "
                          f"{', '.join(sorted(entries)[:3])}{' ...' if len(entries) > 3 else ''}); replacing it "
                          "would delete them\n  fix: choose another directory, or empty this one yourself")


def _walk(root: Path) -> Iterable[Path]:
    """Every path under root, without descending into symlinked directories."""
    for path in root.iterdir():
        yield path
        if path.is_dir() and not path.is_symlink():
            yield from _walk(path)


@contextmanager
def staged(out: Path, what: str) -> Iterator[Path]:
    """A directory written whole or not at all: the block writes into a staging folder beside `out` (one that a
    killed writer left there is removed first), renamed to `out` — replacing what is there — when the block ends,
    removed when it raises."""
    require_new_output(out, what)
    staging = out.with_name(f".{out.name}.tuneforge-staging")
    shutil.rmtree(staging, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging.mkdir()
    try:
        yield staging
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def require_new_output(out: Path, what: str) -> None:
    """Before anything slow runs: a staged output (`staged`) can be written at `out`: a writable place, not a
    symlink (the output is renamed into place, which would replace the link, not fill its target)."""
    if out.is_symlink():
        raise RunDirError(f"{what} {out} is a symlink (to {out.resolve()}); the output is written beside it and "
                          "renamed into place, which would replace the link, not fill its target\n  fix: give the "
                          "real directory's path")
    require_writable_dir(out, what)


def require_writable_file(path: Path, what: str) -> None:
    """Before anything slow runs: `path` can be written as a file (the folders above it are made if missing)."""
    if path.is_dir():
        raise RunDirError(f"{what} {path} is a directory\n  fix: give a file path, e.g. {path / 'scores.json'}")
    require_writable_dir(path.parent, what)


def require_writable_dir(directory: Path, what: str) -> None:
    """Before anything slow runs: `directory` is a directory or can become one, and files can be written there.
    Tried for real (a file made and removed in the directory, or in its nearest existing parent), since
    permission bits do not tell about a read-only mount, and root ignores them."""
    import tempfile

    if directory.exists() and not directory.is_dir():
        raise RunDirError(f"{what} {directory} is a file, not a directory\n  fix: choose a directory path")
    existing = next(p for p in (directory, *directory.parents) if p.exists())
    if not existing.is_dir():
        raise RunDirError(f"{what} {directory}: {existing} is a file, so no directory can be made under it\n  fix: "
                          "choose a directory path")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".tuneforge-probe-"):
            pass
    except OSError as exc:
        raise RunDirError(f"{what} {directory}: cannot write in {existing} ({exc.strerror})\n  fix: choose a "
                          "directory you can write to") from None
