"""Meta-learning against its control, on the bundled task family (textops): three starts trained on the twelve
meta-training tasks with the same episodes and steps — plain multi-task (the control), Reptile and FOMAML — then
`strategy: fewshot` adapting each start, and a fresh adapter on the base, to the five held-out targets with k
examples over several seeds, beside in-context learning (k = 0: zero-shot). One report (fewshot.md/.html/.png).

    python -m bench.meta --quick        # k 0, 4, 16, 64; 5 seeds; 30 outer steps of 3 tasks, 10-step adaptations
    python -m bench.meta                # the same grid, 100 outer steps of 4 tasks, 20-step adaptations (hours)
    python -m bench.meta --steps 10 --seeds 2 --k 0 4 16 --max-test 20   # a smaller grid
    python -m bench.meta --model PATH   # another model of the same family (the default: SmolLM2-135M-Instruct)

Each start is `tuneforge train examples/meta.yaml` with its algorithm; the runs go to bench/results/meta/ and the
report's averaged table is printed with each stage's time."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import yaml

from bench.common import machine_line

ROOT = Path(__file__).parents[1]
CONFIG = ROOT / "examples" / "meta.yaml"
STARTS = ("multitask", "reptile", "fomaml")
QUICK = ["--steps", "30", "--meta-batch", "3", "--adapt-steps", "10", "--adapt-lr", "2e-3", "--adapt-batch", "4",
         "--max-test", "25"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the smaller preset: " + " ".join(QUICK))
    parser.add_argument("--steps", type=int, default=100, help="outer steps of each start's meta-training")
    parser.add_argument("--meta-batch", type=int, default=4, help="tasks per outer step")
    parser.add_argument("--k", type=int, nargs="+", default=[0, 4, 16, 64])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--adapt-steps", type=int, default=20, help="optimizer steps of each few-shot adaptation")
    parser.add_argument("--adapt-lr", type=float, default=1e-3, help="the adaptations' learning rate")
    parser.add_argument("--adapt-batch", type=int, default=8, help="the adaptations' batch (at most k)")
    parser.add_argument("--resume", action="store_true", help="keep the finished starts and few-shot cells of an "
                        "earlier run into --out (a killed run continues)")
    parser.add_argument("--max-test", type=int, default=50, help="test questions per target")
    parser.add_argument("--model", default="default")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "meta")
    parser.add_argument("--probe", choices=["inner-lr", "in-context"], help="instead of the grid: how far four SGD "
                        "steps at each inner rate move a task's query loss; or scoring in-context prompts with and "
                        "without their shared prefix cached")
    argv = list(argv if argv is not None else sys.argv[1:])
    args = parser.parse_args([*QUICK, *argv] if "--quick" in argv else argv)  # given options override the preset
    print(machine_line())
    if args.probe:
        {"inner-lr": probe_inner_lr, "in-context": probe_in_context}[args.probe](args)
    else:
        run(args)


def _session(args):
    """The fewshot config's model with a fresh adapter, its tokenizer and the family."""
    from tuneforge.api import load
    from tuneforge.data.family import family_for
    from tuneforge.engine.console import RunConsole
    from tuneforge.engine.session import open_session
    from tuneforge.models.load import load_tokenizer
    from tuneforge.runs.recipe import read_recipe

    config = yaml.safe_load((ROOT / "examples" / "fewshot.yaml").read_text())
    config["model"], config["output"] = args.model, {"dir": str(args.out / "probe"), "overwrite": True}
    loaded = load(config)
    session = open_session(loaded, read_recipe(loaded), RunConsole(quiet=True))
    return loaded, session, load_tokenizer(loaded.run.model), family_for(loaded, "textops", None)


def probe_inner_lr(args) -> None:
    """Four SGD steps (support batches of 4) from a fresh adapter, then the query loss (4 other examples)."""
    import torch

    from tuneforge.data.batching import collate
    from tuneforge.models.parts import label_token_nll
    from tuneforge.strategies.fewshot import _encoded
    from tuneforge.strategies.metalearning import adapt, functional_loss, trainable

    loaded, session, tokenizer, family = _session(args)

    def loss(model, batch):
        with session.scoring():
            nll, count = label_token_nll(model, batch)
        return nll / count

    loss_of, theta = functional_loss(session.model, loss), trainable(session.model)
    print("| task | inner lr | query loss before | after 4 steps |\n|---|---|---|---|")
    for task in ("upper", "to_json"):
        examples = _encoded(family.tasks[task].support(20, 3), tokenizer, loaded.run)
        support = [collate(examples[i * 4:(i + 1) * 4], tokenizer.pad_token_id) for i in range(4)]
        query = collate(examples[16:20], tokenizer.pad_token_id)
        with torch.no_grad():
            before = loss_of(theta, query).item()
        for rate in (1e-3, 1e-2, 1e-1, 3e-1, 1.0):
            adapted = adapt(loss_of, theta, support, rate)
            with torch.no_grad():
                after = loss_of(adapted, query).item()
            print(f"| {task} | {rate:g} | {before:.3f} | {after:.3f} |")


def probe_in_context(args) -> None:
    """25 questions of `lower` after k = 16 and 64 examples: scored with the shared prefix cached, and without."""
    import tuneforge.evaluation.forced as forced
    from tuneforge.data.dataset import encode_examples
    from tuneforge.strategies.fewshot import _in_context, _score

    loaded, session, tokenizer, family = _session(args)
    data = loaded.run.data.model_copy(update={"max_seq_len": 2048})
    print("| k | prompt tokens | cached: s | exact match | recomputed: s | exact match |\n|---|---|---|---|---|---|")
    original = forced.SHARED_PREFIX
    for k in (16, 64):
        prompts, _ = encode_examples(_in_context(family.tasks["lower"], k, 0, 25), tokenizer, data,
                                     apply_drop_guard=False)
        row = []
        for shared in (original, 10**9):
            forced.SHARED_PREFIX, started = shared, time.perf_counter()
            scored = _score(session, prompts, tokenizer.pad_token_id)
            row += [time.perf_counter() - started, scored["exact_match"]]
        forced.SHARED_PREFIX = original
        print(f"| {k} | {scored['prompt_tokens']:.0f} | {row[0]:.1f} | {row[1]:.0f}% | {row[2]:.1f} | {row[3]:.0f}% |")


def config_for(args, out: Path, strategy: dict, train: dict | None = None) -> dict:
    config = yaml.safe_load(CONFIG.read_text())
    config["model"] = args.model
    config["strategy"] = {**config["strategy"], **strategy}
    config["train"] = {**config["train"], **(train or {})}
    config["output"] = {"dir": str(out), "overwrite": True}
    return config


def run(args) -> None:
    from tuneforge.api import train
    from tuneforge.reports.fewshot import markdown, read_table
    from tuneforge.runs.index import status

    starts, timings = {}, {}
    for algorithm in STARTS:
        started = time.perf_counter()
        out = args.out / f"meta-{algorithm}"
        strategy = {"algorithm": algorithm, "meta_batch": args.meta_batch}
        config = config_for(args, out, strategy, {"max_steps": args.steps})
        done = args.resume and status(out) == "complete"
        starts[algorithm] = str(out if done else train(config, quiet=True, resume=args.resume and status(out)
                                                       in ("interrupted", "failed")).run_dir)
        timings[algorithm] = time.perf_counter() - started
    started = time.perf_counter()
    fewshot = {"name": "fewshot", "family": "textops", "starts": {"base": None, **starts}, "k": args.k,
               "seeds": args.seeds, "steps": args.adapt_steps, "max_test": args.max_test}
    config = config_for(args, args.out / "fewshot", {}, {"save_every": 0, "lr": args.adapt_lr,
                                                         "batch_size": args.adapt_batch})
    config["strategy"] = fewshot
    config["data"] = {"max_seq_len": 2048}  # room for 64 examples in context
    result = train(config, quiet=True, resume=args.resume and status(args.out / "fewshot") is not None)
    timings["fewshot"] = time.perf_counter() - started
    table = [r for r in read_table(result.run_dir) if r["task"] == "mean"]
    print(markdown(table))
    print("; ".join(f"{stage} {seconds / 60:.1f} min" for stage, seconds in timings.items()))
    print(f"report: {result.run_dir / 'fewshot.md'}")


if __name__ == "__main__":
    main()
