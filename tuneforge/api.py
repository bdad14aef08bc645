"""The Python API, with the command line's reach: each `tuneforge` command is one call of a function here (the
CLI parses, calls, prints), so a notebook does what the CLI does and gets the results as values. Importing this
module loads neither PyTorch nor a model: a config's mistakes fail in a fraction of a second.

    import tuneforge.api as tf
    result = tf.train("examples/quickstart.yaml", ["train.max_steps=20"])
    tf.evaluate(result.run_dir, data="quickstart:test").flat()

Every function is documented with a runnable example in docs/python-api.md (executed by the tests)."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tuneforge.config import LoadedConfig, load_config
from tuneforge.errors import ConfigError
from tuneforge.strategies.catalogue import Entry, catalogue

if TYPE_CHECKING:
    from tuneforge.data.check import DataCheck
    from tuneforge.reports.lr_find import LrFind
    from tuneforge.runs.evaluate import Evaluation
    from tuneforge.runs.run import RunResult
    from tuneforge.runs.serving import AdapterSet, Chat
    from tuneforge.strategies.sweep import SweepResult
    from tuneforge.web.openai import Server

ConfigLike = str | Path | dict | LoadedConfig


def load(config: ConfigLike, overrides: Sequence[str] = ()) -> LoadedConfig:
    """A config (a YAML path, a dict of the same shape, or one loaded already) with `section.key=value` overrides,
    checked whole — the method's, objective's and strategy's own keys too — before PyTorch loads."""
    from tuneforge.strategies import checked

    return checked(config if isinstance(config, LoadedConfig) else load_config(config, overrides))


def train(config: ConfigLike, overrides: Sequence[str] = (), *, resume: bool = False, force: bool = False,
          quiet: bool = False, nproc: int = 1) -> RunResult:
    """Fine-tune as the config says and return where the run went and what it measured (its before and after
    scores). `resume` continues from the newest checkpoint; `force` lets it continue although the data, training
    config or tokenizer changed. `nproc` > 1 trains data-parallel in that many processes on this machine (the config
    must then be a file)."""
    loaded = load(config, overrides)
    if nproc > 1:
        return _train_in_processes(loaded, overrides, nproc, resume=resume, force=force, quiet=quiet)
    from tuneforge.strategies import run_config

    return run_config(loaded, resume=resume, force=force, quiet=quiet)


def _train_in_processes(loaded: LoadedConfig, overrides: Sequence[str], nproc: int, **flags: bool) -> RunResult:
    """`nproc` training processes launched as torchrun does; what the main one finished, read from its run."""
    from tuneforge.engine.distributed import launch
    from tuneforge.runs.run import finished, resolve_run_dir

    if loaded.source is None:
        raise ConfigError("nproc > 1 starts processes that read the config from its file\n  fix: save the config "
                          "as YAML and pass its path")
    launch(nproc, ["train", str(loaded.source), *overrides, *(f"--{name}" for name, on in flags.items() if on)])
    return finished(resolve_run_dir(loaded))


def compare(config: ConfigLike, methods: Sequence[str], out_dir: str | Path, *, quick: bool = False,
            overrides: Sequence[str] = (), quiet: bool = False) -> dict[str, Path]:
    """Train the same task with each method (same data, steps, seed; each in a fresh process so its peak memory
    is its own), measure each run's latency and forgetting, and write report.md, report.html and charts into
    `out_dir`; returns the report's files."""
    from tuneforge.strategies.compare import compare as run_compare

    return run_compare(config, methods, out_dir, quick=quick, overrides=overrides, quiet=quiet)


def sweep(config: ConfigLike, out: str | Path, overrides: Sequence[str] = (), *, resume: bool = False,
          workers: int = 1, storage: str | None = None, quiet: bool = False) -> SweepResult:
    """Search the hyperparameters the config's `sweep:` section names, on Optuna: each trial a run directory under
    `out`/trials, the study in `out`/study.db (or `storage`, an Optuna URL several machines share), `workers`
    processes taking trials; writes best.yaml, trials.json and the report (sweep.md/.html/.png). `resume` continues
    a sweep that was stopped or killed."""
    if importlib.util.find_spec("optuna") is None:
        raise ConfigError("tuneforge sweep runs on Optuna, which is not installed\n  fix: pip install "
                          "'tuneforge[sweep]'")
    from tuneforge.strategies.sweep import sweep as search

    return search(load(config, overrides), Path(out), resume=resume, workers=workers, storage=storage, quiet=quiet)


def lr_find(config: ConfigLike, overrides: Sequence[str] = (), *, start: float = 1e-7, end: float = 1.0,
            steps: int = 100, diverge: float = 4.0, quiet: bool = False) -> LrFind:
    """The learning-rate range test: a short run of the config (into its output.dir + "-lr-find") whose rate rises
    exponentially from `start` to `end` over `steps` steps, stopped when the smoothed loss passes `diverge` times its
    lowest; returns the rates, losses and the suggested rate (and writes lr_find.json and lr_find.png)."""
    from tuneforge.strategies.lr_find import lr_find as range_test

    return range_test(load(config, overrides), start=start, end=end, steps=steps, diverge=diverge, quiet=quiet)


def evaluate(run_dir: str | Path, *, data: str | None = None, metrics: str | Sequence[str] | None = None,
             batch_size: int = 16, max_new_tokens: int = 64, max_examples: int | None = None,
             bench: str | None = None, shots: int | None = None, style: str = "letters",
             lm_eval: str | Sequence[str] | None = None, lm_eval_include: str | Path | None = None,
             limit: int | None = None, lm_eval_allow_code: bool = False, output: str | Path | None = None
             ) -> Evaluation:
    """Score a finished run on `data` (any supported format; loss/perplexity, exact match, ROUGE, BLEU, or all of
    a classifier's metrics) by the evaluator its training used, on a multiple-choice `bench` (MMLU layout or
    quickstart:mc; few-shot `shots`, `style` letters or choices), and on lm-evaluation-harness `lm_eval` tasks
    (Python beside the task YAMLs of `lm_eval_include` runs only with `lm_eval_allow_code`). Returns the scores
    (`.scores`, `.flat()`) and the model's answers (`.samples`), also written to `output` as JSON (checked
    writable before anything is scored)."""
    from tuneforge.config import TASK_METRICS, parse_metrics
    from tuneforge.evaluation.harness import requested_tasks
    from tuneforge.evaluation.multiple_choice import bench_scores, read_questions
    from tuneforge.runs.evaluate import Evaluation, evaluate_run
    from tuneforge.runs.layout import write_json
    from tuneforge.runs.paths import require_writable_file
    from tuneforge.runs.trained import load_trained, require_run_dir

    if not (data or bench or lm_eval):
        raise ConfigError("nothing to evaluate on\n  fix: give --data FILE, --bench FILE or --lm-eval TASKS")
    if style not in ("letters", "choices"):
        raise ConfigError(f"--style {style}: not a prompt style\n  fix: letters or choices")
    task = require_run_dir(Path(run_dir)).task
    if (bench or lm_eval) and task != "causal_lm":
        raise ConfigError("--bench and --lm-eval score a language model's answers; this is a classification run\n"
                          "  fix: evaluate it with --data")
    default = "loss,exact_match,rouge,bleu" if task == "causal_lm" else ",".join(TASK_METRICS[task])
    wanted = parse_metrics(metrics if isinstance(metrics, str) else ",".join(metrics or []) or default, "--metrics",
                           task)
    questions = read_questions(bench) if bench else None
    lm_tasks = requested_tasks(lm_eval, lm_eval_include, lm_eval_allow_code) if lm_eval is not None else []
    if output is not None:
        require_writable_file(Path(output), "--output")
    trained = load_trained(run_dir)
    scores, samples = {}, []
    if data:
        scores, samples = evaluate_run(trained, data, wanted, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                       max_examples=max_examples)
    if questions:
        scored, bench_samples = bench_scores(trained.model, trained.tokenizer, questions,
                                             shots=5 if shots is None else shots, style=style,
                                             batch_size=batch_size, autocast=trained.autocast)
        scores.update(scored)
        samples += [{"bench": True, **sample} for sample in bench_samples]
    if lm_tasks:
        from tuneforge.evaluation.harness import lm_eval_scores  # imports lm-eval (seconds)

        scores["lm_eval"] = lm_eval_scores(trained.model, trained.tokenizer, lm_tasks, shots=shots,
                                           batch_size=batch_size, include_path=lm_eval_include, limit=limit,
                                           allow_code=lm_eval_allow_code)
    evaluation = Evaluation(scores, samples)
    if output is not None:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        write_json(Path(output), {"scores": evaluation.scores, "samples": evaluation.samples})
    return evaluation


def data_check(config: ConfigLike, overrides: Sequence[str] = (), *, samples: int = 2) -> DataCheck:
    """Read and check a config's data as training would (by its objective's data kind), and tokenize it to show
    what will be trained, before any model weights load: per split, the counts and lengths under the length policy,
    warnings, and `samples` records as trained. A record that cannot train raises a located `DataError`;
    `.failed` says whether training would stop (too much dropped for length); `.lines()` is what the CLI prints."""
    from tuneforge.data.check import DataCheck
    from tuneforge.data.kinds import load_splits
    from tuneforge.models.load import load_tokenizer
    from tuneforge.objectives import get_objective

    loaded = load(config, overrides)
    cfg, objective = loaded.run, get_objective(loaded.run.objective.name)
    notes: list[str] = []
    train, test, labels = objective.kind.split(loaded, load_splits(loaded, objective, notes, sample=True))
    tokenizer = load_tokenizer(cfg.model)
    reports = [objective.kind.report(split, records, tokenizer, cfg.data, samples, labels)
               for split, records in (("train", train), ("test", test)) if records]
    return DataCheck(notes, objective.kind.heading(labels), reports)


def export(run_dir: str | Path, out: str | Path, *, merge: bool = False, overwrite: bool = False,
           gguf: bool = False, quant: Sequence[str] = ()) -> Path:
    """Write a finished run as a plain Hugging Face model directory (weights + tokenizer) that transformers alone
    loads (`merge` folds an adapter in), or with `gguf` as GGUF files (`quant`: f16 by default, bf16, q8_0, q4_0,
    q4_1, f32; q4_k_m with llama-cpp-python) with an Ollama Modelfile. Written whole or not at all."""
    from tuneforge.runs.export import export_run

    if quant and not gguf:
        raise ConfigError("--quant chooses a GGUF type\n  fix: add --gguf")
    quants = list(dict.fromkeys(quant or ["f16"])) if gguf else []
    return export_run(run_dir, out, merge=merge, overwrite=overwrite, gguf=quants)


def merge(runs: Sequence[str | Path], out: str | Path, *, how: str = "ties",
          weights: Sequence[float] | str | None = None, density: float = 0.5, seed: int = 0,
          overwrite: bool = False) -> Path:
    """Fold several LoRA runs on one base into one adapter (peft's add_weighted_adapter: linear, ties, dare_linear,
    dare_ties, cat, magnitude_prune), written as a run directory that evaluate, chat and export accept. A per-task
    multitask run stands for its adapters. `weights`: one per run (or their comma list)."""
    from tuneforge.runs.merge import merge_runs
    from tuneforge.runs.serving import adapter_runs

    if isinstance(weights, str):
        try:
            weights = [float(w) for w in weights.split(",")]
        except ValueError:
            raise ConfigError(f"--weights {weights!r}: not numbers\n  fix: e.g. --weights 0.5,0.5") from None

    return merge_runs(adapter_runs(runs), out, how=how, weights=weights, density=density, seed=seed,
                      overwrite=overwrite)


def chat(runs: str | Path | Sequence[str | Path], *, max_new_tokens: int = 256, temperature: float = 0.0,
         top_p: float = 1.0, system: str | None = None, adapter: str | None = None) -> Chat:
    """A conversation with finished runs: `.say(text)` answers (the conversation so far before it), `.reset()`
    forgets it, and with several adapter runs of one base `.use(name)` switches adapter without reloading."""
    from tuneforge.runs.serving import open_chat

    return open_chat([runs] if isinstance(runs, str | Path) else runs, max_new_tokens=max_new_tokens,
                     temperature=temperature, top_p=top_p, system=system, adapter=adapter)


def serve(runs: str | Path | Sequence[str | Path] | dict[str, str | Path], *, host: str = "127.0.0.1",
          port: int = 8000, api_key: str | None = None, max_tokens: int = 512, max_batch: int = 8,
          background: bool = False, announce: bool = False) -> Server:
    """An OpenAI-compatible endpoint over finished runs (`/v1/models`, `/v1/chat/completions`, `/v1/completions`,
    streaming; each run a model name, adapter runs sharing one base). Blocks until Ctrl-C, or with `background`
    returns a running `Server` (`.url` for the `openai` client's base_url, `.stop()`). Beyond loopback an
    `api_key` is required."""
    from tuneforge.runs.serving import load_served
    from tuneforge.web.guard import is_loopback
    from tuneforge.web.openai import start

    _need_web("serve")
    if not is_loopback(host) and not api_key:
        raise ConfigError(f"--host {host}: beyond loopback anyone who reaches this machine could use the models\n"
                          "  fix: set an API key (TUNEFORGE_API_KEY or --api-key-file FILE), or serve on 127.0.0.1")
    named = runs if isinstance(runs, dict) else [runs] if isinstance(runs, str | Path) else list(runs)
    return start(load_served(named), host=host, port=port, token=api_key, max_tokens=max_tokens,
                 max_batch=max_batch, background=background, announce=announce)


def ui(runs: str | Path = "runs", *, host: str = "127.0.0.1", port: int = 8765, parallel: int = 1,
       background: bool = False, announce: bool = False) -> Server:
    """The web UI over a folder of runs and sweeps: list, watch (live charts), launch from a form, stop and resume,
    compare, sweeps, chat, export. Blocks until Ctrl-C, or with `background` returns the running `Server` (`.url`
    opens the page with the token that writes; `.stop()`). Runs it launches are processes of their own, `parallel`
    at a time: stopping the UI stops none of them."""
    from tuneforge.web.ui import start_ui

    _need_web("ui")
    return start_ui(Path(runs), host=host, port=port, parallel=parallel, background=background, announce=announce)


def _need_web(command: str) -> None:
    if importlib.util.find_spec("starlette") is None or importlib.util.find_spec("uvicorn") is None:
        raise ConfigError(f"tuneforge {command} runs on Starlette and uvicorn, which are not installed\n  fix: pip "
                          "install 'tuneforge[web]'")


def load_adapter_set(runs: dict[str, str | Path] | Sequence[str | Path]) -> AdapterSet:
    """The base model loaded once with each run's adapter under its name; `.generate(name, conversations)`."""
    from tuneforge.runs.serving import load_adapter_set as load_set

    return load_set(runs)


def reward_score(run_dir: str | Path, data: str, *, batch_size: int = 16) -> tuple[list[dict], dict]:
    """A reward model's score of each completion in `data` (prompt/completion records get one each; preference
    pairs both sides), and a summary (examples, and on pairs the share whose chosen side scores higher)."""
    from tuneforge.runs.trained import load_trained, score_rewards

    return score_rewards(load_trained(run_dir), data, batch_size=batch_size)


def make_student(source: str | Path, layers: int, out: str | Path) -> dict:
    """Write a distillation student into `out`: the teacher's embeddings, head and `layers` of its decoder layers
    (spread evenly from the first to the last), as a plain Hugging Face model directory. The teacher is 'default',
    a model directory, a hub id, or a finished run (what it trained merged in first). Returns the layers kept and
    both models' parameter counts."""
    from tuneforge.config import ModelConfig
    from tuneforge.models import student
    from tuneforge.runs.export import merged_model
    from tuneforge.runs.identity import run_identity
    from tuneforge.runs.paths import require_new_output, staged

    source, out = str(source), Path(out)
    require_new_output(out, "--out")
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out {out} already exists and is not empty\n  fix: choose a new directory, or remove it")
    run = Path(source).expanduser()
    if source != "default" and not run.exists() and (source.startswith((".", "/", "~")) or source.count("/") > 1):
        raise ConfigError(f"--from {source}: no such model directory or run\n  fix: give 'default', a Hugging Face "
                          "model directory, a hub id, or a finished tuneforge run")
    teacher = {}
    if (run / "config.yaml").is_file():  # a finished run: what it trained merged in
        model, tokenizer, _ = merged_model(run)
        teacher = {"model": model, "tokenizer": tokenizer,
                   "source_sha256": run_identity(run, load_config(run / "config.yaml").run.model)}
    with staged(out, "--out") as staging:
        return student.make_student(ModelConfig(path=source), layers, staging, **teacher)


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


def feedback_serve(model: str | Path, prompts: str | Path, *, model_b: str | Path | None = None,
                   db: str | Path = "feedback.db", host: str = "127.0.0.1", port: int = 8765, max_new_tokens: int = 128,
                   temperature: float = 0.8, top_p: float = 0.95, reviewers: str | Path | None = None,
                   on_ready: Callable[[str, int], None] = print) -> None:
    """Serve the review page until interrupted: reviewers pick the better of two responses to each prompt (one
    model sampled twice, or `model` and `model_b`), rate them and may write a better answer; every judgement is
    saved in `db` as it happens. `on_ready(url, prompts)` is called once the page listens."""
    from tuneforge.feedback.app import FeedbackApp, load_prompts, load_reviewers, model_sampler
    from tuneforge.feedback.store import FeedbackStore
    from tuneforge.runs.serving import load_responder
    from tuneforge.web.feedback import serve_feedback

    _need_web("feedback serve")
    if model_b is None and temperature <= 0:
        raise ConfigError("--temperature 0 with one model would show the same response twice\n  fix: give a "
                          "temperature above 0, or a second model with --model-b")
    closed_list = load_reviewers(str(reviewers)) if reviewers else None
    conversations = load_prompts(str(prompts))
    store = FeedbackStore(Path(db))
    responders = [load_responder(model)] + ([load_responder(model_b)] if model_b else [])
    sampler = model_sampler(responders, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
    serve_feedback(FeedbackApp(store, conversations, sampler, closed_list), host, port,
                   on_ready=lambda url: on_ready(url, len(conversations)))


def feedback_export(db: str | Path = "feedback.db", out: str | Path = "feedback") -> dict[str, int]:
    """Write the judgements as training data: preferences.jsonl (for reward / dpo), rated.jsonl (for kto) and
    sft.jsonl (from corrections) in `out`; returns each file's record count and `skipped_empty`."""
    from tuneforge.feedback.store import export as export_feedback

    return export_feedback(_feedback_store(db), Path(out))


def feedback_stats(db: str | Path = "feedback.db") -> dict:
    """Counts per reviewer and choice, position bias, and agreement between reviewers."""
    from tuneforge.feedback.store import stats

    return stats(_feedback_store(db))


def _feedback_store(db: str | Path):
    from tuneforge.feedback.store import FeedbackStore

    if not Path(db).is_file():
        raise ConfigError(f"--db {db}: no such feedback database\n  fix: give the file `tuneforge feedback serve "
                          "--db` wrote")
    return FeedbackStore(Path(db))


def bench_check(path: str | Path, *, shots: int = 5, style: str = "letters", samples: int = 2,
                columns: dict[str, str] | None = None) -> list[str]:
    """A benchmark file read as `eval --bench` reads it (every question checked; `columns` names another layout's
    fields): its counts by subject, and `samples` questions as the model is asked them (`shots` examples first)
    with the right answer, as lines."""
    from collections import Counter

    from tuneforge.evaluation.multiple_choice import LETTERS, read_questions, requests

    if style not in ("letters", "choices"):
        raise ConfigError(f"--style {style}: not a prompt style\n  fix: letters or choices")
    questions = read_questions(str(path), columns)
    asked = requests(questions, shots, style)
    subjects = Counter(q.subject or "(none)" for q, _, _ in asked)
    lines = [f"{path}: {len(asked)} questions, {len(questions) - len(asked)} few-shot (dev) records; "
             + ", ".join(f"{name} {count}" for name, count in sorted(subjects.items()))]
    for question, prompt, choices in asked[:samples]:
        lines += [f"--- {question.subject or 'question'} ({style}, {shots} shots): the prompt, then each choice "
                  "scored as its continuation", prompt, *(f"  {'*' if i == question.answer else ' '} {LETTERS[i]} "
                                                         f"{choice!r}" for i, choice in enumerate(choices)),
                  f"  right answer: {LETTERS[question.answer]} ({question.choices[question.answer]})"]
    return lines


def bench(name: str, args: Sequence[str] = ()) -> int:
    """Run a benchmark of the source checkout's bench/ (against the peers, side by side) with its own options;
    its exit code."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    if not (root / "bench" / f"{name}.py").is_file():
        available = sorted(p.stem for p in (root / "bench").glob("*.py") if p.stem not in ("__init__", "common"))
        raise ConfigError(f"no benchmark '{name}' in {root / 'bench'}\n  fix: use one of: "
                          f"{', '.join(available) or '(none: the benchmarks ship with the source checkout)'}")
    return subprocess.call([sys.executable, "-m", f"bench.{name}", *args], cwd=root)


def config_reference() -> str:
    """The config reference (docs/reference/config.md), generated from the schema: every section's keys with their
    types, defaults and descriptions, and each method's, objective's and strategy's own parameters."""
    from tuneforge.config import NamedParams, RunConfig
    from tuneforge.strategies.catalogue import TITLES, catalogue, default_of

    lines = ["# Config reference", "", "Generated from the schema by `make docs` (a test checks that it is current). "
             "Every key has a default unless it says required; an unknown key is an error that names the closest "
             "valid one.", ""]
    shown: set[type] = set()
    for name, spec in RunConfig.model_fields.items():
        schema = _model_of(spec.annotation)
        lines += [f"## `{name}`", "", spec.description or "", ""]
        if schema is None:
            lines += [f"{_type_name(spec.annotation)}; default `{default_of(spec)}`", ""]
        elif not issubclass(schema, NamedParams):
            lines += _tables(schema, f"{name}.", shown)
    for key, entries in catalogue().items():
        lines += [f"## {TITLES[key]}", ""]
        for entry in entries:
            fields = entry.schema.model_fields
            lines += [f"### `{entry.name}`", "", entry.summary, "",
                      *(_field_table(fields, "") if fields else ["No parameters.", ""])]
    return "\n".join(lines).rstrip() + "\n"


def _tables(schema, prefix: str, shown: set) -> list[str]:
    """A section's keys, then each kind of entry it holds (a dataset, the benchmark) once."""
    lines = _field_table(schema.model_fields, prefix)
    for key, spec in schema.model_fields.items():
        nested = _model_of(spec.annotation)
        if nested is not None and nested not in shown:
            shown.add(nested)
            lines += [f"### `{prefix}{key}`", "", (nested.__doc__ or "").strip().split("\n\n")[0].replace("\n", " "),
                      "", *_field_table(nested.model_fields, "")]
    return lines


def _field_table(fields: dict, prefix: str) -> list[str]:
    from tuneforge.strategies.catalogue import default_of

    rows = ["| key | type | default | what it does |", "| --- | --- | --- | --- |"]
    for key, spec in fields.items():
        description = (spec.description or "").replace("|", "\\|").replace("\n", " ")
        rows.append(f"| `{prefix}{key}` | {_type_name(spec.annotation)} | {default_of(spec, '`')} | {description} |")
    return [*rows, ""]


def _model_of(annotation):
    from typing import get_args

    from pydantic import BaseModel

    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _type_name(annotation) -> str:
    """A type as a person reads it: `a \\| b` for a choice, `list of X`, `X or none`."""
    from typing import Literal, get_args, get_origin

    from pydantic import BaseModel

    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin is list:
        return f"list of {_type_name(args[0])}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"{annotation.__name__} (below)"
    if origin is dict:
        return f"mapping of {_type_name(args[0])} to {_type_name(args[1])}"
    if args and type(None) in args:
        return " or ".join(_type_name(a) for a in args if a is not type(None)) + " or none"
    return {"str": "text", "int": "integer", "float": "number", "bool": "true \\| false"}.get(
        getattr(annotation, "__name__", str(annotation)), getattr(annotation, "__name__", str(annotation)))


__all__ = [
    "Entry",
    "bench",
    "bench_check",
    "catalogue",
    "chat",
    "compare",
    "config_reference",
    "data_check",
    "evaluate",
    "export",
    "feedback_export",
    "feedback_serve",
    "feedback_stats",
    "load",
    "load_adapter_set",
    "make_student",
    "merge",
    "reward_score",
    "student_report",
    "train",
    "ui",
]
