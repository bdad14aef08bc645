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
    argv = list(argv if argv is not None else sys.argv[1:])
    args = parser.parse_args([*QUICK, *argv] if "--quick" in argv else argv)  # given options override the preset
    run(args)


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
    from tuneforge.runs.run import status

    print(machine_line())
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
