"""The command line, a table of commands: each parses its arguments, calls one `tuneforge.api` function and
prints what it returned. User errors end with their message (what, where, the fix) and exit code 2."""

from __future__ import annotations

import contextlib
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


def _group(name: str, summary: str) -> typer.Typer:
    group = typer.Typer(no_args_is_help=True, help=summary)
    app.add_typer(group, name=name)
    return group


data_app = _group("data", "Inspect datasets before training.")
reward_app = _group("reward", "Use a trained reward model.")
feedback_app = _group("feedback", "Collect human feedback in the browser; export it as data.")
student_app = _group("student", "Make a smaller student model for distillation.")

ConfigArg = Annotated[Path, typer.Argument(help="run config (YAML)")]
OverridesArg = Annotated[list[str] | None, typer.Argument(help="overrides such as train.lr=1e-4 method.r=16")]
RunArg = Annotated[Path, typer.Argument(help="a finished run directory")]
DbOption = Annotated[Path, typer.Option(help="the feedback database (SQLite)")]


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
    from tuneforge.api import train as run_training

    try:  # a stop request (SIGTERM) to a started run ends it as Ctrl-C does (`runs.Run`)
        result = run_training(config, overrides or [], resume=resume, force=force, quiet=quiet, nproc=nproc)
    except KeyboardInterrupt:
        print("interrupted: `tuneforge train ... --resume` continues from the newest checkpoint", file=sys.stderr)
        raise typer.Exit(130) from None
    if nproc == 1 and os.environ.get("RANK", "0") == "0":  # one process reports (with --nproc, the main one has)
        print("\n".join([f"run directory: {result.run_dir}", *result.table()]))


@app.command()
@user_errors
def sweep(config: ConfigArg, overrides: OverridesArg = None,
          out: Annotated[Path, typer.Option(help="the sweep's folder: study.db, trials/, best.yaml, the report")]
          = Path("sweep"),
          resume: Annotated[bool, typer.Option(help="continue a stopped or killed sweep")] = False,
          workers: Annotated[int, typer.Option(min=1, max=256, help="processes taking trials at once")] = 1,
          storage: Annotated[str | None, typer.Option(help="an Optuna storage URL that several machines share "
                                                      "(postgresql://..., mysql://...)")] = None,
          quiet: Annotated[bool, typer.Option(help="plain log lines, no progress bar")] = False) -> None:
    """Search hyperparameters (the config's sweep: section) with Optuna; writes best.yaml and a report."""
    from tuneforge.api import sweep as search

    print("\n".join(search(config, out, overrides or [], resume=resume, workers=workers, storage=storage,
                           quiet=quiet).lines()))


@app.command("lr-find")
@user_errors
def lr_find(config: ConfigArg, overrides: OverridesArg = None,
            start: Annotated[float, typer.Option(min=0.0, help="the first rate")] = 1e-7,
            end: Annotated[float, typer.Option(min=0.0, help="the last rate")] = 1.0,
            steps: Annotated[int, typer.Option(min=5, help="optimizer steps from start to end")] = 100,
            quiet: Annotated[bool, typer.Option(help="plain log lines, no progress bar")] = False) -> None:
    """The learning-rate range test: the loss as the rate rises; prints a suggested train.lr and plots the curve."""
    from tuneforge.api import lr_find as range_test

    print("\n".join(range_test(config, overrides or [], start=start, end=end, steps=steps, quiet=quiet).lines()))


@app.command("eval")
@user_errors
def evaluate(run_dir: RunArg,
             data: Annotated[str | None, typer.Option(help="dataset file in any supported format")] = None,
             metrics: Annotated[str | None, typer.Option(help="comma list of loss, exact_match, rouge, bleu (default: "
                                                         "all four; a classifier: all of its task's)")] = None,
             batch_size: Annotated[int, typer.Option(min=1)] = 16,
             max_new_tokens: Annotated[int, typer.Option(min=1)] = 64,
             max_examples: Annotated[int | None, typer.Option(min=1, help="evaluate only the first N")] = None,
             bench: Annotated[str | None, typer.Option(help="a multiple-choice file (MMLU layout), quickstart:mc")]
             = None,
             shots: Annotated[int | None, typer.Option(min=0, help="few-shot examples (--bench: 5 from its 'dev' "
                                                       "records; --lm-eval: the task's default)")] = None,
             style: Annotated[str, typer.Option(help="--bench prompt: letters (MMLU) or choices (ARC)")] = "letters",
             lm_eval: Annotated[str | None, typer.Option("--lm-eval", help="comma list of lm-eval tasks")] = None,
             lm_eval_include: Annotated[Path | None, typer.Option(help="a directory of lm-eval task YAMLs")] = None,
             limit: Annotated[int | None, typer.Option(min=1, help="--lm-eval: the first N questions per task")] = None,
             lm_eval_allow_code: Annotated[bool, typer.Option(help="let the task YAMLs of --lm-eval-include run the "
                                                              "Python they name (!function, class)")] = False,
             output: Annotated[Path | None, typer.Option(help="also write scores and samples as JSON")] = None,
             ) -> None:
    """Evaluate a trained run on a dataset (loss/perplexity, exact match, ROUGE, BLEU; a classifier's metrics),
    a multiple-choice benchmark (--bench), or lm-evaluation-harness tasks (--lm-eval)."""
    from tuneforge.api import evaluate as score

    result = score(run_dir, data=data, metrics=metrics, batch_size=batch_size, max_new_tokens=max_new_tokens,
                   max_examples=max_examples, bench=bench, shots=shots, style=style, lm_eval=lm_eval,
                   lm_eval_include=lm_eval_include, limit=limit, lm_eval_allow_code=lm_eval_allow_code, output=output)
    shown = result.flat()
    width = max(16, *(len(name) for name in shown)) if shown else 16
    for name, value in shown.items():
        print(f"{name:>{width}}  {value:.4f}")


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
    from tuneforge.api import chat as open_chat

    empty = next((i for i, text in enumerate(message or [], 1) if not text.strip()), None)
    if empty is not None:
        raise ConfigError(f"--message number {empty} is empty\n  fix: give each --message some text")
    session = open_chat(run_dirs, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                        system=system, adapter=adapter)
    if session.note:
        print(session.note)
    scripted = list(message or [])
    while text := (scripted.pop(0) if scripted else (None if message else _ask())):
        if (shown := session.handle(text)) is not None:
            print(shown, flush=True)


@app.command()
@user_errors
def serve(runs: Annotated[list[str], typer.Argument(help="finished run directories (NAME=PATH names one); adapter "
                                                  "runs of one base share it")],
          host: Annotated[str, typer.Option(help="the address to listen on; beyond loopback an API key is "
                                            "required")] = "127.0.0.1",
          port: Annotated[int, typer.Option(min=0, max=65535, help="0 picks a free port")] = 8000,
          api_key_file: Annotated[Path | None, typer.Option(help="a file holding the API key clients must send "
                                                            "(or the TUNEFORGE_API_KEY variable)")] = None,
          max_tokens: Annotated[int, typer.Option(min=1, help="the most tokens a request may ask for (and a chat "
                                                  "request's default)")] = 512,
          max_batch: Annotated[int, typer.Option(min=1, help="concurrent requests decoded together")] = 8) -> None:
    """An OpenAI-compatible endpoint: /v1/models, /v1/chat/completions and /v1/completions (streamed when asked),
    each run a model name. Stop with Ctrl-C."""
    import os

    from tuneforge.api import serve as start

    key = os.environ.get("TUNEFORGE_API_KEY") or None
    if api_key_file is not None:
        try:
            key = api_key_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--api-key-file {api_key_file}: cannot read it ({exc})\n  fix: give a readable text "
                              "file holding the key") from None
        if not key:
            raise ConfigError(f"--api-key-file {api_key_file}: the file is empty\n  fix: write the key into it")
    named = dict(r.split("=", 1) for r in runs if "=" in r) if all("=" in r for r in runs) else None
    if named is None and any("=" in r for r in runs):
        raise ConfigError("serve: name every run (NAME=PATH) or none\n  fix: e.g. dates=runs/a sums=runs/b")
    print(f"loading {len(runs)} run(s) ...", flush=True)
    start(named or runs, host=host, port=port, api_key=key, max_tokens=max_tokens, max_batch=max_batch,
          announce=True)


@app.command()
@user_errors
def ui(runs: Annotated[Path, typer.Option(help="the folder of runs (and sweeps) it shows; launched runs go there")]
       = Path("runs"),
       host: Annotated[str, typer.Option(help="the address to listen on (beyond loopback every page needs the "
                                         "token)")] = "127.0.0.1",
       port: Annotated[int, typer.Option(min=0, max=65535, help="0 picks a free port")] = 8765,
       parallel: Annotated[int, typer.Option(min=1, max=64, help="launched runs training at once; the rest "
                                             "queue")] = 1) -> None:
    """A web UI over a folder of runs: watch them train, launch from a form, stop, resume, compare, sweeps, chat.
    Open the URL it prints (it carries the token that launches and stops runs). Ctrl-C stops the UI, not the runs."""
    from tuneforge.api import ui as start

    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {host}: anyone who reaches this machine sees the page; only the printed URL's "
              "token launches, stops or reads runs", file=sys.stderr)
    start(runs, host=host, port=port, parallel=parallel, announce=True)


def _ask() -> str | None:
    with contextlib.suppress(EOFError):
        return input("you: ")
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


@data_app.command("bench")
@user_errors
def data_bench(file: Annotated[str, typer.Argument(help="a multiple-choice file (as eval --bench takes)")],
               shots: Annotated[int, typer.Option(min=0)] = 5, style: str = "letters",
               samples: Annotated[int, typer.Option(min=0, help="questions to show as asked")] = 2) -> None:
    """Read a benchmark file and show how its questions will be asked and which answer is right, without a run."""
    from tuneforge.api import bench_check
    print("\n".join(bench_check(file, shots=shots, style=style, samples=samples)))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@user_errors
def bench(ctx: typer.Context,
          name: Annotated[str, typer.Argument(help="which benchmark: sft (see bench/ for the list)")]) -> None:
    """Run a benchmark from bench/ against the peers, side by side; options pass through (e.g. --quick)."""
    from tuneforge.api import bench as run_bench

    raise typer.Exit(run_bench(name, ctx.args))


@app.command()
@user_errors
def export(run_dir: RunArg,
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
    from tuneforge.api import export as write_export

    print(f"exported: {write_export(run_dir, out, merge=merge, overwrite=overwrite, gguf=gguf, quant=quant or [])}")


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
    from tuneforge.api import merge as merge_runs

    merged = merge_runs(run_dirs, out, how=how, weights=weights, density=density, seed=seed, overwrite=overwrite)
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
    for kind, path in run_compare(config, names, out, quick=quick, overrides=overrides or [], quiet=quiet).items():
        print(f"{kind}: {path}")


@reward_app.command("score")
@user_errors
def reward_score(run_dir: Annotated[Path, typer.Argument(help="a finished run of objective: reward")],
                 data: Annotated[str, typer.Option(help="completions (prompt/completion, messages ...) or pairs")],
                 output: Annotated[Path | None, typer.Option(help="also write every score as JSONL")] = None,
                 batch_size: int = 16) -> None:
    """Score completions with a trained reward model; on preference pairs, also the pair accuracy."""
    from tuneforge.api import reward_score as score

    rows, summary = score(run_dir, data, batch_size=batch_size)
    for row in rows[:10]:
        shown = f"chosen {row['chosen']:+.3f}  rejected {row['rejected']:+.3f}" if "chosen" in row else \
            f"reward {row['reward']:+.3f}"
        print(f"{row['where']}  {shown}")
    if len(rows) > 10:
        print(f"... {len(rows) - 10} more")
    for name, value in summary.items():
        print(f"{name}: {value:.3f}" if isinstance(value, float) else f"{name}: {value}")
    if output:
        output.write_text("".join(json.dumps(r) + "\n" for r in rows))


@feedback_app.command("serve")
@user_errors
def feedback_serve(model: Annotated[str, typer.Option(help="whose responses are judged: a run, 'default', a model")],
                   prompts: Annotated[str, typer.Option(help="JSONL of {\"prompt\": ...} (or messages) to answer")],
                   model_b: Annotated[str | None, typer.Option(help="a second run or model to answer too")] = None,
                   db: DbOption = Path("feedback.db"), host: str = "127.0.0.1", port: int = 8765,
                   max_new_tokens: int = 128,
                   temperature: Annotated[float, typer.Option(help="> 0 for one model (two responses)")] = 0.8,
                   top_p: float = 0.95,
                   reviewers: Annotated[Path | None, typer.Option(help="`name token` lines: a closed list of "
                                                                       "reviewers")] = None) -> None:
    """Start the review page: reviewers pick the better of two responses (or a tie), rate them 1-5 and may
    write a better answer. Everything is saved in --db as it happens; stop with Ctrl-C. Without --reviewers, the
    first to use a name takes it."""
    from tuneforge.api import feedback_serve as serve

    # a service manager's stop ends the server as Ctrl-C does; SIGINT is set too, as a shell starting the
    # server in the background (`... &`) leaves it ignored
    for stop in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop, signal.default_int_handler)
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn raises the signal again once it has shut down
        serve(model, prompts, model_b=model_b, db=db, host=host, port=port, max_new_tokens=max_new_tokens,
              temperature=temperature, top_p=top_p, reviewers=reviewers,
              on_ready=lambda url, count: print(f"feedback page: {url}  ({count} prompts, saving to {db}); Ctrl-C "
                                                "stops", flush=True))
    print("stopped; every saved judgement is in the database")


@feedback_app.command("export")
@user_errors
def feedback_export(db: DbOption = Path("feedback.db"),
                    out: Annotated[Path, typer.Option(help="directory for the JSONL files")] = Path("feedback"),
                    ) -> None:
    """Write preferences.jsonl (for reward / dpo), rated.jsonl (for kto) and sft.jsonl (from corrections)."""
    from tuneforge.api import feedback_export as write_feedback

    counts = write_feedback(db, out)
    skipped = counts.pop("skipped_empty")
    for name, count in counts.items():
        print(f"{out / name}: {count} records")
    if skipped:
        print(f"skipped {skipped} records with an empty response (a model's empty answer is judged, not trained on)")


@feedback_app.command("stats")
@user_errors
def feedback_stats(db: DbOption = Path("feedback.db")) -> None:
    """Counts per reviewer and choice, position bias, and agreement between reviewers."""
    from tuneforge.api import feedback_stats as stats

    for name, value in stats(db).items():
        shown = f"{value:.3f}" if isinstance(value, float) else ("n/a" if value is None else value)
        print(f"{name.replace('_', ' ')}: {shown}")


@app.command()
def methods() -> None:
    """List the methods (what is trained), objectives (what is optimised) and strategies (what is trained when),
    with their parameters."""
    from tuneforge.api import catalogue
    from tuneforge.strategies.catalogue import TITLES

    for key, entries in catalogue().items():
        print("\n".join([TITLES[key], *(line for entry in entries for line in entry.lines()), ""]))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
