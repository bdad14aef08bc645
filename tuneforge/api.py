"""The Python API; the CLI calls the same functions, so both take one code path."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tuneforge.config import LoadedConfig, load_config
from tuneforge.data.check import DataCheck
from tuneforge.engine.distributed import require_one_process, world
from tuneforge.errors import ConfigError
from tuneforge.reports.plots import plot_confusion, plot_loss
from tuneforge.reports.tasks import write_task_report
from tuneforge.runs.run import RunResult
from tuneforge.runs.serving import AdapterSet, load_adapter_set
from tuneforge.strategies import strategy_for
from tuneforge.strategies.compare import compare


def data_check(config: str | Path | dict | LoadedConfig, overrides: Sequence[str] = (), *, samples: int = 2
               ) -> DataCheck:
    """Read and check a config's data as training would (by its objective's data kind), and tokenize it to show
    what will be trained, before any model weights load: per split, the counts and lengths under the length policy,
    warnings, and `samples` records as trained. A record that cannot train raises a located `DataError`;
    `.failed` says whether training would stop (too much dropped for length); `.lines()` is what the CLI prints."""
    from tuneforge.data.kinds import load_splits
    from tuneforge.models.load import load_tokenizer
    from tuneforge.objectives import get_objective

    loaded = config if isinstance(config, LoadedConfig) else load_config(config, overrides)
    cfg, objective = loaded.run, get_objective(loaded.run.objective.name)
    notes: list[str] = []
    train, test, labels = objective.kind.split(loaded, load_splits(loaded, objective, notes))
    tokenizer = load_tokenizer(cfg.model)
    reports = [objective.kind.report(split, records, tokenizer, cfg.data, samples, labels)
               for split, records in (("train", train), ("test", test)) if records]
    return DataCheck(notes, objective.kind.heading(labels), reports)


def make_student(source: str | Path, layers: int, out: str | Path) -> dict:
    """Write a distillation student into `out`: the teacher's embeddings, head and `layers` of its decoder layers
    (spread evenly from the first to the last), as a plain Hugging Face model directory. The teacher is 'default',
    a model directory, a hub id, or a finished run (what it trained merged in first). Returns the layers kept and
    both models' parameter counts."""
    from tuneforge.config import ModelConfig, load_config
    from tuneforge.models import student
    from tuneforge.runs.export import merged_model
    from tuneforge.runs.identity import run_identity
    from tuneforge.runs.paths import require_writable_dir

    source, out = str(source), Path(out)
    require_writable_dir(out, "--out")
    run = Path(source).expanduser()
    if source != "default" and not run.exists() and (source.startswith((".", "/", "~")) or source.count("/") > 1):
        raise ConfigError(f"--from {source}: no such model directory or run\n  fix: give 'default', a Hugging Face "
                          "model directory, a hub id, or a finished tuneforge run")
    if not (run / "config.yaml").is_file():
        return student.make_student(ModelConfig(path=source), layers, out)
    model, tokenizer, _ = merged_model(run)
    return student.make_student(ModelConfig(path=source), layers, out, model=model, tokenizer=tokenizer,
                                source_sha256=run_identity(run, load_config(run / "config.yaml").run.model))


def student_report(teacher: str | Path, students: Sequence[str | Path], out: str | Path,
                   notes: Sequence[str] = ()) -> dict[str, Path]:
    """Measure the teacher's and each student's model (merged, in the run's precision: layers, parameters, size,
    generation speed; speed.json in each run) and write the report side by side (report.md, report.html, a chart,
    report.json) into `out`; returns the files written."""
    from tuneforge.reports.distill import write_report
    from tuneforge.runs.measure import measure_speed
    from tuneforge.runs.paths import require_writable_dir
    from tuneforge.runs.trained import require_run_dir

    out, runs = Path(out), [Path(teacher), *map(Path, students)]
    require_writable_dir(out, "--out")
    for run in runs:
        require_run_dir(run)
    for run in runs:
        measure_speed(run)
    return write_report(out, runs[0], runs[1:], list(notes))


def train(config: str | Path | dict | LoadedConfig, overrides: Sequence[str] = (), *, resume: bool = False,
          force: bool = False, quiet: bool = False) -> RunResult:
    """Fine-tune as the config says and return where the run went and what it measured.

    `config` is a YAML path, a dict of the same shape, or an already loaded config; `overrides` are
    `section.key=value` strings as on the command line. `force` lets a resume continue although the data,
    training config or tokenizer differ from the checkpoint's.
    """
    loaded = config if isinstance(config, LoadedConfig) else load_config(config, overrides)
    strategy, params = strategy_for(loaded)
    if not strategy.data_parallel:
        require_one_process(f"strategy {strategy.name}", loaded.where("strategy"))
    result = strategy.run(loaded, params, resume=resume, force=force, quiet=quiet)
    if world().main:  # the other processes of a distributed run write nothing
        plot_loss(result.run_dir)
        plot_confusion(result.run_dir)  # a classification run's
        write_task_report(result.run_dir)  # each task's before/after, where the test sets name tasks
    return result


__all__ = ["AdapterSet", "RunResult", "compare", "load_adapter_set", "train"]
