"""The command line: `tuneforge train | eval | chat | data check | methods | bench`. The composition root of the
package."""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from tuneforge.errors import ConfigError, TuneforgeError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Fine-tune language models from one config file.")
data_app = typer.Typer(no_args_is_help=True, help="Inspect datasets before training.")
app.add_typer(data_app, name="data")
reward_app = typer.Typer(no_args_is_help=True, help="Use a trained reward model.")
app.add_typer(reward_app, name="reward")
feedback_app = typer.Typer(no_args_is_help=True, help="Collect human feedback in the browser; export it as data.")
app.add_typer(feedback_app, name="feedback")
student_app = typer.Typer(no_args_is_help=True, help="Make a smaller student model for distillation.")
app.add_typer(student_app, name="student")

ConfigArg = Annotated[Path, typer.Argument(help="run config (YAML)")]
OverridesArg = Annotated[list[str] | None, typer.Argument(help="overrides such as train.lr=1e-4 method.r=16")]


def user_errors(command):
    """Print a TuneforgeError's message (what, where, fix) and exit 2 instead of a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except TuneforgeError as exc:
            if not getattr(exc, "reported", False):  # another process of a distributed run has said it
                print(f"error: {exc}", file=sys.stderr)
            raise typer.Exit(exc.exit_code) from None

    return wrapper


@app.command()
@user_errors
def train(config: ConfigArg, overrides: OverridesArg = None,
          resume: Annotated[bool, typer.Option(help="continue from the newest complete checkpoint")] = False,
          force: Annotated[bool, typer.Option(help="with --resume: continue although the data, training config "
                                                   "or tokenizer changed")] = False,
          quiet: Annotated[bool, typer.Option(help="plain log lines, no progress bar")] = False,
          nproc: Annotated[int, typer.Option(min=1, max=1024, help="data-parallel processes on this machine (one "
                                             "per GPU; gloo on CPU), launched as torchrun does; for several "
                                             "machines run `torchrun ... -m tuneforge train`")] = 1) -> None:
    """Fine-tune as the config says; writes a run directory."""
    from tuneforge.config import load_config
    from tuneforge.methods import validate_method_params
    from tuneforge.objectives import validate_objective_params
    from tuneforge.strategies import validate_strategy_params

    # the whole schema first, the method's, objective's and strategy's own keys included, before PyTorch is
    # imported (2 s): a typo in the config fails in a fraction of a second
    loaded = load_config(config, overrides or [])
    validate_method_params(loaded.run.method, loaded.where("method"))
    validate_objective_params(loaded.run.objective, loaded.where("objective"))
    validate_strategy_params(loaded.run.strategy, loaded.where("strategy"))
    if nproc > 1:
        from tuneforge.engine.distributed import launch

        launch(nproc, ["train", str(config), *(overrides or []), *(["--resume"] if resume else []),
                       *(["--force"] if force else []), *(["--quiet"] if quiet else [])])
        return  # the main process has printed the results
    from tuneforge.api import train as run_training

    signal.signal(signal.SIGTERM, _interrupt)  # a stop request ends the run as Ctrl-C does: run.json says so
    try:
        result = run_training(loaded, resume=resume, force=force, quiet=quiet)
    except KeyboardInterrupt:
        print("interrupted: `tuneforge train ... --resume` continues from the newest checkpoint", file=sys.stderr)
        raise typer.Exit(130) from None
    if os.environ.get("RANK", "0") == "0":  # one process of a distributed run reports
        print(f"run directory: {result.run_dir}")
        _print_before_after(result.eval_before, result.eval_after)


@app.command("eval")
@user_errors
def evaluate(run_dir: Annotated[Path, typer.Argument(help="a finished run directory")],
             data: Annotated[str | None, typer.Option(help="dataset file in any supported format")] = None,
             metrics: Annotated[str | None, typer.Option(help="comma list of loss, exact_match, rouge, bleu "
                                                         "(default: all four); a classification run reports all of "
                                                         "its task's")] = None,
             batch_size: Annotated[int, typer.Option(min=1)] = 16,
             max_new_tokens: Annotated[int, typer.Option(min=1)] = 64,
             max_examples: Annotated[int | None, typer.Option(min=1, help="evaluate only the first N")] = None,
             bench: Annotated[str | None, typer.Option(help="a multiple-choice file (MMLU layout), or "
                                                       "quickstart:mc: scored by each choice's log-likelihood")] = None,
             shots: Annotated[int | None, typer.Option(min=0, help="few-shot examples (--bench: from its 'dev' "
                                                       "records, default 5; --lm-eval: the task's default)")] = None,
             style: Annotated[str, typer.Option(help="--bench prompt: letters (MMLU) or choices (ARC)")] = "letters",
             lm_eval: Annotated[str | None, typer.Option("--lm-eval", help="comma list of lm-evaluation-harness "
                                                         "tasks, run by lm-eval itself on the run's model")] = None,
             lm_eval_include: Annotated[Path | None, typer.Option(help="a directory of lm-eval task YAMLs (local "
                                                                  "data, offline)")] = None,
             limit: Annotated[int | None, typer.Option(min=1, help="--lm-eval: the first N questions per task")] = None,
             output: Annotated[Path | None, typer.Option(help="also write scores and samples as JSON")] = None,
             ) -> None:
    """Evaluate a trained run on a dataset: loss/perplexity, exact match, ROUGE, BLEU; a classification run
    reports all of its task's metrics (accuracy, F1, per class; entity F1; MSE and Pearson's r). --bench scores a
    multiple-choice benchmark, --lm-eval runs lm-evaluation-harness tasks."""
    from tuneforge.config import TASK_METRICS, parse_metrics
    from tuneforge.engine.console import flat_scores
    from tuneforge.runs.evaluate import evaluate_run
    from tuneforge.runs.trained import load_trained, require_run_dir

    if not (data or bench or lm_eval):
        raise ConfigError("nothing to evaluate on\n  fix: give --data FILE, --bench FILE or --lm-eval TASKS")
    if style not in ("letters", "choices"):
        raise ConfigError(f"--style {style}: not a prompt style\n  fix: letters or choices")
    task = require_run_dir(run_dir).task
    if (bench or lm_eval) and task != "causal_lm":
        raise ConfigError("--bench and --lm-eval score a language model's answers; this is a classification run\n"
                          "  fix: evaluate it with --data")
    default = "loss,exact_match,rouge,bleu" if task == "causal_lm" else ",".join(TASK_METRICS[task])
    wanted = parse_metrics(metrics or default, "--metrics", task)
    questions = None
    if bench:
        from tuneforge.evaluation.multiple_choice import read_questions

        questions = read_questions(bench)
    trained = load_trained(run_dir)
    scores, samples = {}, []
    if data:
        scores, samples = evaluate_run(trained, data, wanted, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                       max_examples=max_examples)
    if questions:
        from tuneforge.evaluation.multiple_choice import bench_scores

        scored, bench_samples = bench_scores(trained.model, trained.tokenizer, questions,
                                             shots=5 if shots is None else shots, style=style,
                                             batch_size=batch_size, autocast=trained.autocast)
        scores.update(scored)
        samples += [{"bench": True, **sample} for sample in bench_samples]
    if lm_eval:
        from tuneforge.evaluation.harness import lm_eval_scores

        tasks = [t.strip() for t in lm_eval.split(",") if t.strip()]
        scores["lm_eval"] = lm_eval_scores(trained.model, trained.tokenizer, tasks, shots=shots,
                                           batch_size=batch_size, include_path=lm_eval_include, limit=limit)
    shown = flat_scores(scores)
    width = max(16, *(len(name) for name in shown)) if shown else 16
    for name, value in shown.items():
        print(f"{name:>{width}}  {value:.4f}")
    if output:
        output.write_text(json.dumps({"scores": scores, "samples": samples}, indent=2))


@app.command()
@user_errors
def chat(run_dirs: Annotated[list[Path], typer.Argument(help="finished run directories; several adapter runs of "
                                                           "one base share it (switch with /use NAME)")],
         message: Annotated[list[str] | None, typer.Option(help="send these messages and exit (no prompt)")] = None,
         adapter: Annotated[str | None, typer.Option(help="with several runs: the one to start with")] = None,
         max_new_tokens: Annotated[int, typer.Option(min=1)] = 256,
         temperature: Annotated[float, typer.Option(min=0.0)] = 0.0,
         top_p: Annotated[float, typer.Option(min=0.0, max=1.0)] = 1.0,
         system: Annotated[str | None, typer.Option(help="system prompt")] = None) -> None:
    """Talk to a tuned model. Empty line or Ctrl-D quits; /reset clears the conversation; /use NAME switches
    adapter (the base model stays loaded)."""
    empty = next((i for i, text in enumerate(message or [], 1) if not text.strip()), None)
    if empty is not None:
        raise ConfigError(f"--message number {empty} is empty\n  fix: give each --message some text")
    reply, names = _responder(run_dirs, max_new_tokens, temperature, top_p)
    current = adapter or names[0]
    if current not in names:
        raise ConfigError(f"--adapter {current}: not one of the runs given\n  fix: use one of: {', '.join(names)}")
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    scripted = list(message or [])
    while True:
        text = scripted.pop(0) if scripted else (None if message else _ask())
        if not text:
            return
        if text.strip() == "/reset":
            history = history[:1] if system else []
            continue
        if text.strip().startswith("/use "):
            wanted = text.strip()[5:].strip()
            if wanted in names:
                current = wanted
                print(f"using {current}")
            else:
                print(f"no adapter '{wanted}'; loaded: {', '.join(names)}")
            continue
        history.append({"role": "user", "content": text})
        answer = reply(current, history)
        history.append({"role": "assistant", "content": answer})
        prefix = f"{current}: " if len(names) > 1 else "assistant: "
        print(f"{prefix}{answer}", flush=True)


def _responder(run_dirs: list[Path], max_new_tokens: int, temperature: float, top_p: float):
    """(reply(name, history) -> text, run names): one run on its own, or several adapters on one base."""
    from tuneforge.data.render import end_of_turn_ids, generation_prompt_ids, use_chat_template
    from tuneforge.evaluation.generate import generate_batch
    from tuneforge.runs.serving import adapter_runs, load_adapter_set
    from tuneforge.runs.trained import load_trained

    run_dirs = adapter_runs(run_dirs)  # a per-task multitask run: its adapters, on one base
    if len(run_dirs) > 1:
        adapters = load_adapter_set(run_dirs)
        return (lambda name, history: adapters.generate(name, [history], max_new_tokens=max_new_tokens,
                                                        temperature=temperature, top_p=top_p)[0]), adapters.names
    trained = load_trained(run_dirs[0])
    if trained.labels is not None:  # a classifier: each message is a text to label
        from tuneforge.runs.evaluate import describe_predictions

        print(f"a {trained.config.task} model: each message is labelled on its own")
        return (lambda name, history: describe_predictions(trained, [history[-1]["content"]])[0]), [run_dirs[0].name]
    chat_template = use_chat_template(trained.tokenizer, trained.config.data.template)
    if not chat_template:
        print("note: this model has no chat template; each message is completed as plain text, without history")
    stops = end_of_turn_ids(trained.tokenizer)

    def reply(name: str, history: list[dict]) -> str:
        prompt = generation_prompt_ids(trained.tokenizer, history, chat=chat_template)
        with trained.autocast():
            return generate_batch(trained.model, trained.tokenizer, [prompt], max_new_tokens=max_new_tokens,
                                  stop_ids=stops, temperature=temperature, top_p=top_p)[0]

    return reply, [run_dirs[0].name]


def _ask() -> str | None:
    try:
        return input("you: ")
    except EOFError:
        return None


@data_app.command("check")
@user_errors
def data_check(config: ConfigArg, overrides: OverridesArg = None,
               samples: Annotated[int, typer.Option(help="rendered examples to show per split")] = 2) -> None:
    """Validate the data and show what will be trained, before any model weights load."""
    from tuneforge.api import data_check as check

    report = check(config, overrides or [], samples=samples)
    print("\n".join(report.lines()))
    if report.failed:
        raise typer.Exit(2)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@user_errors
def bench(ctx: typer.Context,
          name: Annotated[str, typer.Argument(help="which benchmark: sft (see bench/ for the list)")]) -> None:
    """Run a benchmark from bench/ against the peers, side by side; options pass through (e.g. --quick)."""
    import subprocess

    from tuneforge.errors import ConfigError

    root = Path(__file__).resolve().parent.parent
    if not (root / "bench" / f"{name}.py").is_file():
        available = sorted(p.stem for p in (root / "bench").glob("*.py") if p.stem not in ("__init__", "common"))
        raise ConfigError(f"no benchmark '{name}' in {root / 'bench'}\n  fix: use one of: "
                          f"{', '.join(available) or '(none: the benchmarks ship with the source checkout)'}")
    raise typer.Exit(subprocess.call([sys.executable, "-m", f"bench.{name}", *ctx.args], cwd=root))


def _print_before_after(before: dict, after: dict) -> None:
    """The after scores beside the before ones; with tasks, their mean first, then each task's (`task/metric`)."""
    from tuneforge.engine.console import flat_scores

    before, after = flat_scores(before), flat_scores(after)
    if not after:
        return
    width = max(12, *(len(name) for name in after))
    print(f"{'metric':>{width}}  {'before':>9}  {'after':>9}  {'change':>9}")
    for name, value in after.items():
        if name in before:
            print(f"{name:>{width}}  {before[name]:9.3f}  {value:9.3f}  {value - before[name]:+9.3f}")
        else:
            print(f"{name:>{width}}  {'':>9}  {value:9.3f}")


@app.command()
@user_errors
def export(run_dir: Annotated[Path, typer.Argument(help="a finished run directory")],
           out: Annotated[Path, typer.Option(help="where to write the Hugging Face model directory")],
           merge: Annotated[bool, typer.Option(help="fold an adapter (LoRA family, IA3, BitFit) in")] = False,
           overwrite: Annotated[bool, typer.Option(help="replace a non-empty --out")] = False,
           gguf: Annotated[bool, typer.Option(help="write GGUF files for llama.cpp / Ollama instead (merged; "
                                              "llama-family models), with an Ollama Modelfile")] = False,
           quant: Annotated[list[str] | None, typer.Option(help="GGUF type, repeatable: f16 (default), bf16, q8_0, "
                                                           "q4_0, q4_1, f32; q4_k_m with llama-cpp-python")] = None
           ) -> None:
    """Write a finished run as a plain Hugging Face model (weights + tokenizer) that transformers alone loads, or
    with --gguf as GGUF files that llama.cpp and Ollama load."""
    from tuneforge.runs.export import export_run

    if quant and not gguf:
        raise ConfigError("--quant chooses a GGUF type\n  fix: add --gguf")
    quants = list(dict.fromkeys(quant or ["f16"])) if gguf else []
    print(f"exported: {export_run(run_dir, out, merge=merge, overwrite=overwrite, gguf=quants)}")


@student_app.command("make")
@user_errors
def student_make(source: Annotated[str, typer.Option("--from", help="the teacher: 'default', a model directory, a "
                                                     "hub id, or a finished tuneforge run (merged first)")],
                 layers: Annotated[int, typer.Option(min=1, help="decoder layers the student keeps, spread evenly "
                                                     "from the first to the last")],
                 out: Annotated[Path, typer.Option(help="the new model directory")]) -> None:
    """Write a student: the teacher's embeddings, head and a subset of its layers, as a plain Hugging Face model."""
    from tuneforge.api import make_student

    made = make_student(source, layers, out)
    print(f"student: {out}: layers {made['kept_layers']} of the teacher's {made['teacher_layers']}; "
          f"{made['student_parameters'] / 1e6:.1f}M parameters (teacher {made['teacher_parameters'] / 1e6:.1f}M)")


@student_app.command("report")
@user_errors
def student_report(runs: Annotated[list[Path], typer.Argument(help="finished student runs")],
                   teacher: Annotated[Path, typer.Option(help="the teacher's finished run")],
                   out: Annotated[Path, typer.Option(help="where report.md, report.html and the chart go")]) -> None:
    """Teacher and students side by side: layers, parameters, size, generation speed and scores."""
    from tuneforge.api import student_report as report

    for kind, path in report(teacher, list(runs), out).items():
        print(f"{kind}: {path}")


@app.command()
@user_errors
def merge(run_dirs: Annotated[list[Path], typer.Argument(help="finished LoRA runs on one base model")],
          out: Annotated[Path, typer.Option(help="the run directory to write")],
          how: Annotated[str, typer.Option(help="linear | ties | dare_linear | dare_ties | cat | magnitude_prune")]
          = "ties",
          weights: Annotated[str | None, typer.Option(help="one weight per run, comma separated (default: 1 each, "
                                                      "1/n for linear and cat)")] = None,
          density: Annotated[float, typer.Option(help="share of each adapter's weights TIES/DARE keep")] = 0.5,
          seed: Annotated[int, typer.Option(help="seed of DARE's random drop")] = 0,
          overwrite: Annotated[bool, typer.Option(help="replace a non-empty --out")] = False) -> None:
    """Fold several LoRA runs into one adapter (peft's add_weighted_adapter); eval, chat and export accept it."""
    from tuneforge.errors import ConfigError
    from tuneforge.runs.merge import merge_runs
    from tuneforge.runs.serving import adapter_runs

    try:
        values = [float(w) for w in weights.split(",")] if weights else None
    except ValueError:
        raise ConfigError(f"--weights {weights!r}: not numbers\n  fix: e.g. --weights 0.5,0.5") from None
    merged = merge_runs(adapter_runs(run_dirs), out, how=how, weights=values, density=density, seed=seed,
                        overwrite=overwrite)
    print(f"merged: {merged}")


@app.command()
@user_errors
def compare(config: ConfigArg, overrides: OverridesArg = None,
            methods: Annotated[str, typer.Option(help="comma list of methods to compare")] =
            "lora,qlora,dora,prefix,prompt,adapter,ia3,bitfit,full",
            quick: Annotated[bool, typer.Option(help="12 steps of 8 and a 30-example evaluation per method")] = False,
            out: Annotated[Path, typer.Option(help="where the runs and the report go")] = Path("runs/compare"),
            quiet: bool = True) -> None:
    """Train one task with each method and report what each cost and gained (report.md, report.html, charts)."""
    from tuneforge.api import compare as run_compare

    names = [m.strip() for m in methods.split(",") if m.strip()]
    written = run_compare(config, names, out, quick=quick, overrides=overrides or [], quiet=quiet)
    for kind, path in written.items():
        print(f"{kind}: {path}")


@reward_app.command("score")
@user_errors
def reward_score(run_dir: Annotated[Path, typer.Argument(help="a finished run of objective: reward")],
                 data: Annotated[str, typer.Option(help="completions (prompt/completion, messages ...) or pairs")],
                 output: Annotated[Path | None, typer.Option(help="also write every score as JSONL")] = None,
                 batch_size: int = 16) -> None:
    """Score completions with a trained reward model; on preference pairs, also the pair accuracy."""
    from tuneforge.runs.trained import load_trained, score_rewards

    rows, summary = score_rewards(load_trained(run_dir), data, batch_size=batch_size)
    for row in rows[:10]:
        scores = f"chosen {row['chosen']:+.3f}  rejected {row['rejected']:+.3f}" if "chosen" in row else \
            f"reward {row['reward']:+.3f}"
        print(f"{row['where']}  {scores}")
    if len(rows) > 10:
        print(f"... {len(rows) - 10} more")
    for name, value in summary.items():
        print(f"{name}: {value:.3f}" if isinstance(value, float) else f"{name}: {value}")
    if output:
        output.write_text("".join(json.dumps(r) + "\n" for r in rows))


DbOption = Annotated[Path, typer.Option(help="the feedback database (SQLite)")]


@feedback_app.command("serve")
@user_errors
def feedback_serve(model: Annotated[str, typer.Option(help="a finished run directory, 'default', or a model "
                                                           "directory; its responses are judged")],
                   prompts: Annotated[str, typer.Option(help="JSONL of {\"prompt\": ...} (or messages) to answer")],
                   model_b: Annotated[str | None, typer.Option(help="a second run or model: each prompt gets one "
                                                                    "response from each")] = None,
                   db: DbOption = Path("feedback.db"), host: str = "127.0.0.1", port: int = 8765,
                   max_new_tokens: int = 128,
                   temperature: Annotated[float, typer.Option(help="sampling temperature (one model: must be > 0 "
                                                                   "so its two responses differ)")] = 0.8,
                   top_p: float = 0.95,
                   reviewers: Annotated[Path | None, typer.Option(help="a closed list of reviewers: `name token` "
                                                                       "lines; without it, the first to use a name "
                                                                       "takes it")] = None) -> None:
    """Start the review page: reviewers pick the better of two responses (or a tie), rate them 1-5 and may
    write a better answer. Everything is saved in --db as it happens; stop with Ctrl-C."""
    from tuneforge.feedback.app import FeedbackApp, load_prompts, load_reviewers, model_sampler
    from tuneforge.feedback.store import FeedbackStore
    from tuneforge.runs.serving import load_responder

    if model_b is None and temperature <= 0:
        raise ConfigError("--temperature 0 with one model would show the same response twice\n  fix: give a "
                          "temperature above 0, or a second model with --model-b")
    closed_list = load_reviewers(str(reviewers)) if reviewers else None
    conversations = load_prompts(prompts)
    store = FeedbackStore(db)
    responders = [load_responder(model)] + ([load_responder(model_b)] if model_b else [])
    sampler = model_sampler(responders, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
    app_ = FeedbackApp(store, conversations, sampler, closed_list)
    # a service manager's stop ends the server as Ctrl-C does; SIGINT is set too, as a shell starting the
    # server in the background (`... &`) leaves it ignored
    for stop in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop, _interrupt)
    try:
        app_.serve(host, port, on_ready=lambda url: print(f"feedback page: {url}  ({len(conversations)} prompts, "
                                                          f"saving to {db}); Ctrl-C stops", flush=True))
    except KeyboardInterrupt:
        print("stopped; every saved judgement is in the database")
    except OSError as exc:
        raise ConfigError(f"--port {port}: cannot listen on {host}:{port}: {exc.strerror}\n  fix: choose another "
                          "--port, or stop what uses it") from None


@feedback_app.command("export")
@user_errors
def feedback_export(db: DbOption = Path("feedback.db"),
                    out: Annotated[Path, typer.Option(help="directory for the JSONL files")] = Path("feedback"),
                    ) -> None:
    """Write preferences.jsonl (for reward / dpo), rated.jsonl (for kto) and sft.jsonl (from corrections)."""
    from tuneforge.feedback.store import FeedbackStore, export

    counts = export(_existing_store(db, FeedbackStore), out)
    skipped = counts.pop("skipped_empty")
    for name, count in counts.items():
        print(f"{out / name}: {count} records")
    if skipped:
        print(f"skipped {skipped} records with an empty response (a model's empty answer is judged, not trained on)")


@feedback_app.command("stats")
@user_errors
def feedback_stats(db: DbOption = Path("feedback.db")) -> None:
    """Counts per reviewer and choice, position bias, and agreement between reviewers."""
    from tuneforge.feedback.store import FeedbackStore, stats

    for name, value in stats(_existing_store(db, FeedbackStore)).items():
        shown = f"{value:.3f}" if isinstance(value, float) else ("n/a" if value is None else value)
        print(f"{name.replace('_', ' ')}: {shown}")


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _existing_store(db: Path, store_type):
    if not db.is_file():
        raise ConfigError(f"--db {db}: no such feedback database\n  fix: give the file `tuneforge feedback serve "
                          "--db` wrote")
    return store_type(db)


@app.command()
def methods() -> None:
    """List the methods (what is trained), objectives (what is optimised) and strategies (what is trained when),
    with their parameters."""
    from tuneforge.methods import REGISTRY as METHODS
    from tuneforge.objectives import REGISTRY as OBJECTIVES
    from tuneforge.strategies import registry as strategies
    from tuneforge.strategies.params import AGGREGATION_PARAMS, MITIGATION_PARAMS

    nested = (("continual-learning mitigations (strategy.mitigation: NAME)", MITIGATION_PARAMS),
              ("federated aggregations (strategy.aggregation: NAME)", AGGREGATION_PARAMS))
    for title, registry in (("methods (method: NAME)", METHODS), ("objectives (objective: NAME)", OBJECTIVES),
                            ("strategies (strategy: NAME)", strategies()),
                            *((title, {name: _Described(name, schema) for name, schema in schemas.items()})
                              for title, schemas in nested)):
        print(title)
        for name, entry in registry.items():
            relative = getattr(entry, "relative_lr", None)
            print(f"  {name:<9} {entry.summary}" + (f" (compare's lr scale {relative:g})" if relative else ""))
            fields = entry.params.model_fields
            if fields:
                shown = ", ".join(f"{key}={_default(field)}" for key, field in fields.items())
                print(f"  {'':<9} {shown}")
        print()


class _Described:
    def __init__(self, name: str, schema) -> None:
        self.summary = (schema.__doc__ or name).strip().split("\n")[0]
        self.params = schema


def _default(field) -> str:
    if field.is_required():
        return "(required)"
    value = field.get_default(call_default_factory=True)
    if hasattr(value, "name") and hasattr(value, "params"):  # a nested registry choice (a mitigation)
        return value.name
    return "[]" if value == [] else str(value)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
