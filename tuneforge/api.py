"""The Python API; the CLI calls the same functions, so both take one code path."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tuneforge.config import LoadedConfig, load_config
from tuneforge.engine.run import RunResult, run
from tuneforge.engine.serving import AdapterSet, load_adapter_set
from tuneforge.reports.plots import plot_loss


def train(config: str | Path | dict | LoadedConfig, overrides: Sequence[str] = (), *, resume: bool = False,
          quiet: bool = False) -> RunResult:
    """Fine-tune as the config says and return where the run went and what it measured.

    `config` is a YAML path, a dict of the same shape, or an already loaded config; `overrides` are
    `section.key=value` strings as on the command line.
    """
    loaded = config if isinstance(config, LoadedConfig) else load_config(config, overrides)
    result = run(loaded, resume=resume, quiet=quiet)
    plot_loss(result.run_dir)
    return result


__all__ = ["AdapterSet", "RunResult", "load_adapter_set", "train"]
