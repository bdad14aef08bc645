"""EleutherAI's lm-evaluation-harness on a tuneforge model: its own `HFLM` class around the model object, any
task it knows (`tuneforge eval RUN --lm-eval arc_easy,hellaswag`), and a benchmark file turned into lm-eval
tasks (one per subject, as MMLU is one task per subject) so that its scores can be set beside tuneforge's own
(`multiple_choice`).

lm-eval downloads its tasks' data from the Hugging Face hub. Offline, point it at local data: a directory of
task YAMLs (`--lm-eval-include DIR`) whose `dataset_path` is a local format (`json`, `parquet`) with
`dataset_kwargs: {data_files: ...}`, or a hub cache filled on another machine with `HF_DATASETS_OFFLINE=1`.
"""

from __future__ import annotations

import importlib.util
import json
import re
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import yaml

from tuneforge.errors import ConfigError
from tuneforge.evaluation.multiple_choice import FEWSHOT_DELIMITER, Question, choice_texts, describe, question_text

TASK_PREFIX = "tuneforge_mc"


def lm_eval_scores(model, tokenizer, tasks: Sequence[str], *, shots: int | None = None, batch_size: int = 16,
                   include_path: str | Path | None = None, limit: int | None = None,
                   builtin_tasks: bool = True, allow_code: bool = False) -> dict[str, dict]:
    """Each task's metrics (percent where lm-eval reports a share) and its number of questions, by lm-eval. A
    model with bf16 frozen weights runs under lm-eval's bf16 autocast, as tuneforge's own evaluation runs it.
    Task YAMLs from `include_path` may not run Python (`!function`, `class:`) unless `allow_code`, nor take the
    name of a built-in task."""
    tasks = requested_tasks(tasks, include_path, allow_code)
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    # indexing lm-eval's thousands of built-in task files takes seconds: skipped when only our own are wanted
    with _overridden_tasks() as overridden:
        manager = TaskManager(include_path=str(include_path) if include_path else None, verbosity="ERROR",
                              include_defaults=builtin_tasks)
    if overridden:
        name, path = overridden[0]
        raise ConfigError(f"--lm-eval-include: {path} defines task {name!r}, which is one of lm-eval's own tasks: its "
                          "scores would be reported under the built-in name\n  fix: rename your task (e.g. "
                          f"my_{name})")
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise ConfigError(f"--lm-eval: lm-eval knows no task {unknown[0]!r}\n  fix: name a task `lm-eval ls tasks` "
                          "lists, or give --lm-eval-include a directory holding its YAML")
    was_training = model.training
    model.eval()
    import torch

    narrow = any(p.dtype == torch.bfloat16 for p in model.parameters())
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
              mixed_precision_dtype=torch.bfloat16 if narrow else None)
    try:
        with quiet_datasets():
            results = simple_evaluate(model=lm, tasks=list(tasks), num_fewshot=shots, task_manager=manager,
                                      limit=limit, log_samples=False, bootstrap_iters=0, verbosity="ERROR")
    except OSError as exc:  # a data file missing, or the hub out of reach (offline)
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"--lm-eval {','.join(tasks)}: lm-eval could not read a task's data: {reason}\n  fix: "
                          "without network, give the data as local files (a task YAML with dataset_path: json and "
                          "dataset_kwargs: {data_files: ...} in --lm-eval-include), or fill the hub cache on another "
                          "machine and set HF_DATASETS_OFFLINE=1") from None
    finally:
        model.train(was_training)
    scores = {}
    for task, metrics in results["results"].items():
        values = {name.split(",")[0]: value for name, value in metrics.items()
                  if isinstance(value, int | float) and "_stderr" not in name and name != "sample_len"}
        scores[task] = {name: 100.0 * value if name.startswith("acc") else value for name, value in values.items()}
        scores[task]["n"] = results["n-samples"].get(task, {}).get("effective")
    return scores


def requested_tasks(tasks: str | Sequence[str], include_path: str | Path | None = None, allow_code: bool = False
                    ) -> list[str]:
    """The tasks asked for (a comma list, or names), lm-eval installed and the include directory checked: all before
    any model loads."""
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t.strip()]
    if not names:
        raise ConfigError("--lm-eval names no task\n  fix: e.g. --lm-eval arc_easy,hellaswag")
    found = importlib.util.find_spec("lm_eval")
    if found is None or not found.submodule_search_locations:
        raise ConfigError("--lm-eval needs lm-evaluation-harness\n  fix: pip install 'tuneforge[lm-eval]' (make "
                          "installs it)")
    if include_path is not None:
        _check_include(Path(include_path), allow_code, Path(found.submodule_search_locations[0]).resolve())
    return names


def _check_include(directory: Path, allow_code: bool, library: Path) -> None:
    """A directory of task YAMLs that exists, whose tasks (and the YAMLs they include) run no Python unless the user
    said they may: lm-eval imports the module a `!function` names, or a task's `class`, from beside the YAML."""
    if not directory.is_dir():
        raise ConfigError(f"--lm-eval-include {directory}: not a directory\n  fix: give the directory that holds your "
                          "task YAMLs")
    if allow_code:
        return
    seen: set[Path] = set()
    pending = sorted(directory.glob("**/*.yaml"))
    while pending:
        path = pending.pop().resolve()
        if path in seen or path.is_relative_to(library):  # lm-eval's own task files are the library's code
            continue
        seen.add(path)
        text = path.read_text(errors="replace")
        try:
            data = yaml.load(text, Loader=_TagTolerantLoader)  # a SafeLoader that keeps tags as text
        except yaml.YAMLError:
            data = None  # lm-eval skips a YAML it cannot read
        code = "!function" in text or (isinstance(data, dict) and "class" in data)
        if code:
            raise ConfigError(f"--lm-eval-include: {path} runs Python (a `!function` or a task `class`): third-party "
                              "task code runs only when you say so\n  fix: read the code it names, then pass "
                              "--lm-eval-allow-code (lm_eval_allow_code=True in Python)")
        included = data.get("include") if isinstance(data, dict) else None
        for name in [included] if isinstance(included, str) else included or []:
            if isinstance(name, str):
                pending.append(path.parent / name)


class _TagTolerantLoader(yaml.SafeLoader):
    """yaml's SafeLoader, reading any tag (`!function x.y`) as the text it tags."""


_TagTolerantLoader.add_multi_constructor("!", lambda loader, tag, node: loader.construct_scalar(node)
                                         if isinstance(node, yaml.ScalarNode) else None)


@contextmanager
def _overridden_tasks() -> Iterator[list[tuple[str, str]]]:
    """The (task, YAML) pairs that lm-eval's index says replace a task of an earlier path (a built-in one)."""
    import logging

    found: list[tuple[str, str]] = []

    class Listen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "overrides existing task" in str(record.msg) and len(record.args or ()) >= 2:
                found.append((str(record.args[0]), str(record.args[1])))

    logger = logging.getLogger("lm_eval.tasks._index")
    handler, level, propagate = Listen(logging.WARNING), logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    try:
        yield found
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


@contextmanager
def quiet_datasets() -> Iterator[None]:
    """No progress bar per split that lm-eval loads."""
    import datasets

    was = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was:
            datasets.enable_progress_bars()


def write_bench_tasks(questions: Sequence[Question], style: str, directory: Path) -> list[str]:
    """The benchmark as lm-eval task YAMLs in `directory`, one per subject: lm-eval's multiple-choice output
    type, the same prompt text and choices as `multiple_choice`, the subject's `dev` records as its few-shot
    examples taken in order (lm-eval's `first_n` sampler), and the MMLU description."""
    import yaml

    by_subject: dict[str, list[Question]] = {}
    for question in questions:
        by_subject.setdefault(question.subject, []).append(question)
    names = []
    for subject, members in by_subject.items():
        name = f"{TASK_PREFIX}_{re.sub(r'[^a-z0-9]+', '_', subject.lower()).strip('_') or 'all'}"
        files = {}
        for split in ("dev", "test"):
            rows = [{"text": question_text(q, style), "options": choice_texts(q, style), "answer": q.answer}
                    for q in members if (q.split == "dev") == (split == "dev")]
            if rows:
                files[split] = str(directory / f"{name}.{split}.jsonl")
                Path(files[split]).write_text("".join(json.dumps(r) + "\n" for r in rows))
        if "test" not in files:
            continue
        task = {"task": name, "dataset_path": "json",
                "dataset_kwargs": {"data_files": files, "cache_dir": str(directory / "datasets-cache")},
                "test_split": "test", "output_type": "multiple_choice", "doc_to_text": "{{text}}",
                "doc_to_choice": "{{options}}", "doc_to_target": "answer", "description": describe(subject),
                "fewshot_delimiter": FEWSHOT_DELIMITER, "target_delimiter": " ",
                "metric_list": [{"metric": name, "aggregation": "mean", "higher_is_better": True}
                                for name in ("acc", "acc_norm")]}
        if "dev" in files:
            task.update(fewshot_split="dev", fewshot_config={"sampler": "first_n"})
        (directory / f"{name}.yaml").write_text(yaml.safe_dump(task, sort_keys=False, allow_unicode=True))
        names.append(name)
    return names


def bench_by_lm_eval(model, tokenizer, questions: Sequence[Question], *, shots: int, style: str,
                     batch_size: int = 16) -> tuple[dict, dict[str, dict]]:
    """The benchmark scored by lm-eval: acc and acc_norm over every question (each subject weighted by its
    size, as tuneforge counts), and each subject's."""
    with tempfile.TemporaryDirectory(prefix="tuneforge-lm-eval-") as directory:
        names = write_bench_tasks(questions, style, Path(directory))
        per_task = lm_eval_scores(model, tokenizer, names, shots=shots, batch_size=batch_size, include_path=directory,
                                  builtin_tasks=False)
    total = sum(scores["n"] for scores in per_task.values())
    overall = {metric: sum(scores[metric] * scores["n"] for scores in per_task.values()) / total
               for metric in ("acc", "acc_norm")}
    return overall, per_task
