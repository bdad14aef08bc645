"""Multiple-choice scoring: tuneforge's harness against lm-evaluation-harness on the same questions and model.

    python -m bench.mc [--data quickstart:mc] [--precision fp32|bf16]

The default model scores the bundled set in both prompt styles (letters 0-shot, as MMLU-style evaluation of a
small model; choices 3-shot); each system's acc, acc_norm and wall time, fastest of `--repeat` rounds, run in turn.
Writes bench/results/mc/<precision>.md.
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import torch

from bench.common import machine_line

CASES = (("letters", 0), ("choices", 3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="quickstart:mc")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneforge.evaluation.harness import bench_by_lm_eval
    from tuneforge.evaluation.multiple_choice import read_questions, score_questions
    from tuneforge.models.default import default_model_dir

    directory = default_model_dir()
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    questions = read_questions(args.data)
    autocast = partial(torch.autocast, "cpu", dtype=torch.bfloat16) if args.precision == "bf16" else nullcontext
    systems = {
        "tuneforge": lambda style, shots: score_questions(model, tokenizer, questions, shots=shots, style=style,
                                                          batch_size=16, autocast=autocast)[0],
        "lm-eval": lambda style, shots: bench_by_lm_eval(model, tokenizer, questions, shots=shots, style=style,
                                                         batch_size=16)[0],
    }
    lines = [f"# Multiple choice on {args.data}: tuneforge vs lm-evaluation-harness ({args.precision})", "",
             machine_line(), "", f"`python -m bench.mc --data {args.data} --precision {args.precision}`; "
             f"{sum(q.split != 'dev' for q in questions)} questions, the default model; wall time of the fastest of "
             f"{args.repeat} rounds (each round runs the systems in turn).", "",
             "| style | shots | system | acc | acc_norm | seconds |", "| --- | --- | --- | --- | --- | --- |"]
    for style, shots in CASES:
        best: dict[str, tuple[float, dict]] = {}
        for _ in range(args.repeat):
            for name, score in systems.items():
                started = time.perf_counter()
                scores = score(style, shots)
                took = time.perf_counter() - started
                if name not in best or took < best[name][0]:
                    best[name] = (took, scores)
        for name, (took, scores) in best.items():
            lines.append(f"| {style} | {shots} | {name} | {scores['acc']:.2f} | {scores['acc_norm']:.2f} | "
                         f"{took:.1f} |")
            print(lines[-1], flush=True)
    out = Path(__file__).parent / "results" / "mc" / f"{args.precision}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
