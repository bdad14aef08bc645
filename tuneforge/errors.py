"""User-facing errors. Each message says what was wrong, where (file:line or config key) and how to fix it.

The CLI turns any `TuneforgeError` into its message on stderr and exit code 2; anything else is a bug.
"""

from __future__ import annotations

from pathlib import Path

USER_ERROR_EXIT_CODE = 2


class TuneforgeError(Exception):
    """An error caused by the user's input, config or environment, not by a bug in tuneforge."""

    exit_code = USER_ERROR_EXIT_CODE


class ConfigError(TuneforgeError):
    """A config file or override is invalid."""


class DataError(TuneforgeError):
    """A dataset record is malformed, or the data as a whole cannot be trained on."""

    def __init__(self, path: str | Path, where: str | int | None, field: str | None, problem: str, fix: str):
        location = f"{path}:{where}" if where is not None else str(path)
        subject = f"field '{field}': " if field else ""
        super().__init__(f"{location}: {subject}{problem}\n  fix: {fix}")
        self.path, self.where, self.field = str(path), where, field


class ModelError(TuneforgeError):
    """A model or tokenizer cannot be found or loaded."""


class TemplateError(TuneforgeError):
    """A chat template renders conversations in a way that makes label masks unreliable."""


class CheckpointError(TuneforgeError):
    """A checkpoint or run directory cannot be used as asked."""


class TrainingError(TuneforgeError):
    """Training cannot go on as configured (a non-finite loss under train.nonfinite: stop)."""


class RunDirError(TuneforgeError):
    """The output directory cannot be written as asked."""
