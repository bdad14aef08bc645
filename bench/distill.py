"""Distillation on the quickstart task: a student of a third of the default model's layers (made from the tuned
teacher with `tuneforge student make`) trained for the same steps on the same data with SFT alone, `kd` over the
whole vocabulary, `kd` over the teacher's cached top-32, `seqkd` and `gkd`; then the teacher and every student
measured side by side (`tuneforge.reports.distill`), with the teacher cache's disk cost beside what a
full-vocabulary cache would take.

    python -m bench.distill [--steps 50] [--layers 10] [--reuse] [--only kd,sft]
    python -m bench.distill --steps 35 --seeds 42,1,2,3,4 --reuse --only sft,kd-t2,kd-top32-t2,kd-priority32-t2

The teacher is runs/quickstart (`make demo`; trained here when missing). Report: bench/results/distill/.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import yaml

from bench.common import machine_line
from tuneforge.api import student_report, train
from tuneforge.config import ModelConfig, tuneforge_home
from tuneforge.models.student import make_student
from tuneforge.runs.export import merged_model

ROOT = Path(__file__).parents[1]
OUT = ROOT / "bench" / "results" / "distill"
# the bundled tasks a teacher is tuned on (quickstart.yaml's LoRA, with these data and steps) and its students
# trained on: the quickstart dates, which the teacher learns to near certainty, and two-number sums, which it
# does not
TASKS: dict[str, dict] = {
    "quickstart": {"data": {"train": "quickstart:train", "test": "quickstart:test"}, "teacher": "quickstart",
                   "teacher_steps": 30, "out": OUT},
    "arithmetic": {"data": {"train": "quickstart:arithmetic-train", "test": "quickstart:arithmetic-test"},
                   "teacher": "arithmetic-teacher", "teacher_steps": 60, "out": OUT / "arithmetic"},
}
STEPS, SEED = 50, 42  # the example's; runs of other lengths or seeds are kept beside these, named by them

# what each student trains with (the rest of examples/distill_kd.yaml is shared)
VARIANTS: dict[str, dict] = {
    "sft": {"name": "sft"},
    "kd": {"name": "kd", "alpha": 0.5},
    "kd-t2": {"name": "kd", "alpha": 0.9, "temperature": 2.0},
    "kd-top32": {"name": "kd", "alpha": 0.5, "top_k": 32},
    "kd-t4": {"name": "kd", "alpha": 0.9, "temperature": 4.0},
    # every token of the record trained, the prompt's too (data.train_on_prompt): the teacher's distribution at
    # each, where the student learns back the general language its dropped layers held
    "sft-all": {"name": "sft", "data": {"train_on_prompt": True}},
    "kd-t2-all": {"name": "kd", "alpha": 0.9, "temperature": 2.0, "data": {"train_on_prompt": True}},
    "kd-top32-t2": {"name": "kd", "alpha": 0.9, "temperature": 2.0, "top_k": 32},
    "kd-top32-t4": {"name": "kd", "alpha": 0.9, "temperature": 4.0, "top_k": 32},
    "kd-top128-t2": {"name": "kd", "alpha": 0.9, "temperature": 2.0, "top_k": 128},  # how much of the tail k carries
    # the same storage as the top 32, an unbiased estimate of the whole distribution: 32 tokens priority-sampled
    "kd-priority32-t2": {"name": "kd", "alpha": 0.9, "temperature": 2.0, "top_k": 32, "top_k_by": "priority"},
    "seqkd": {"name": "seqkd"},
    "gkd": {"name": "gkd", "lam": 0.5, "max_new_tokens": 16},
    "gkd-sft": {"name": "gkd", "lam": 0.5, "alpha": 0.5, "max_new_tokens": 16},  # SFT on the data's answers too
}


def teacher_run(task: dict) -> Path:
    """runs/quickstart is `make demo`'s run; each task's teacher is trained here when missing."""
    path = ROOT / "runs" / task["teacher"]
    if not (path / "eval.json").is_file():
        config = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
        train({**config, "data": {**config["data"], **task["data"]},
               "train": {**config["train"], "max_steps": task["teacher_steps"]},
               "output": {"dir": str(path), "overwrite": True}}, quiet=True)
    return path


def student_dir(out: Path, teacher: Path, layers: int) -> Path:
    path = out / f"student-{layers}"
    if not (path / "config.json").is_file():
        model, tokenizer, _ = merged_model(teacher)
        make_student(ModelConfig(path=str(teacher)), layers, path, model=model, tokenizer=tokenizer)
    return path


def run_variant(name: str, task: dict, student: Path, teacher: Path, steps: int, seed: int,
                reuse: bool) -> tuple[Path, dict]:
    out = task["out"] / "runs" / (name + _suffix(steps, seed))
    if reuse and (out / "eval.json").is_file():
        return out, json.loads((out / "bench.json").read_text())
    config = yaml.safe_load((ROOT / "examples" / "distill_kd.yaml").read_text())
    objective = dict(VARIANTS[name])
    data = {**config["data"], **task["data"], **objective.pop("data", {})}
    if objective["name"] != "sft":
        objective["teacher"] = str(teacher)
    caches = set((tuneforge_home() / "cache" / "teacher").glob("*.safetensors"))
    started = time.perf_counter()
    result = train({**config, "model": str(student), "objective": objective, "data": data,
                    "train": {**config["train"], "max_steps": steps, "seed": seed},
                    "output": {"dir": str(out), "overwrite": True}}, quiet=True)
    extra = {"wall_s": time.perf_counter() - started, "exact_match": result.eval_after.get("exact_match")}
    written = set((tuneforge_home() / "cache" / "teacher").glob("*.safetensors")) - caches
    cache = next(iter(written), None) or _newest(tuneforge_home() / "cache" / "teacher")
    if objective.get("top_k") and cache is not None:
        from safetensors import safe_open

        with safe_open(str(cache), "pt") as handle:
            positions, k = handle.get_slice("logprobs").get_shape()
        vocab = len(json.loads((teacher / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"])
        extra["cache"] = {"file": str(cache), "bytes": cache.stat().st_size, "positions": positions, "top_k": k,
                          "full_vocabulary_bytes_fp32": positions * vocab * 4, "vocabulary": vocab}
    (out / "bench.json").write_text(json.dumps(extra, indent=2))
    return out, extra


MIN_GAIN = 5.0  # exact-match points on 100 prompts below which a "share of the gain" is noise over noise
# each whole-vocabulary kd variant and its top-k twins (the same settings, the teacher's k from the cache)
TWINS = {"kd": ("kd-top32",), "kd-t2": ("kd-top32-t2", "kd-top128-t2", "kd-priority32-t2"), "kd-t4": ("kd-top32-t4",)}


def gains(figures: dict) -> list[str]:
    """Each kd variant's exact match over SFT alone's, and what each top-k twin keeps of that gain, at what
    share of a full-vocabulary cache's storage."""
    if "sft" not in figures:
        return []
    sft, notes = figures["sft"]["exact_match"], []
    for full, tops in TWINS.items():
        if full not in figures:
            continue
        gain = figures[full]["exact_match"] - sft
        notes.append(f"{full} over SFT alone: {gain:+.1f} exact match")
        for top in (t for t in tops if t in figures and "cache" in figures[t]):
            cache, top_gain = figures[top]["cache"], figures[top]["exact_match"] - sft
            full_bytes = cache["full_vocabulary_bytes_fp32"]
            kept = (f"it keeps {100 * top_gain / gain:.0f}% of {full}'s gain" if gain >= MIN_GAIN else
                    f"{full} gained {gain:+.1f} over SFT here, within what one seed moves a cell, so no share of a "
                    f"gain is defined ({top_gain:+.1f})")
            notes.append(f"{top}: {top_gain:+.1f} over SFT; its cache {cache['bytes'] / 2**20:.1f} MiB for "
                         f"{cache['positions']} trained positions ({100 * cache['bytes'] / full_bytes:.2f}% of a "
                         f"full-vocabulary fp32 cache, {full_bytes / 2**30:.1f} GiB); {kept}")
    return notes


def over_seeds(scores: dict[str, dict[int, dict]], seeds: list[int], steps: int) -> str:
    """Exact match and test loss of every variant at every seed, their means and standard deviations, and what
    each top-k twin keeps of its whole-vocabulary twin's mean gain over SFT (single runs on the steep part of the
    learning curve spread by tens of points: the mean over seeds is the figure to read)."""
    def stats(values: list[float]) -> str:
        mean = sum(values) / len(values)
        sd = (sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1)) ** 0.5
        return f"{mean:.1f} ± {sd:.1f}" if max(values) > 1.5 else f"{mean:.3f} ± {sd:.3f}"

    lines = [f"# Distillation over {len(seeds)} seeds, {steps} steps", "",
             "| variant | " + " | ".join(f"seed {s}" for s in seeds)
             + " | exact match, mean ± sd | test loss, mean ± sd |",
             "| --- |" + " --- |" * (len(seeds) + 2)]
    means = {}
    for name, by_seed in scores.items():
        em = [by_seed[s]["exact_match"] for s in seeds]
        loss = [by_seed[s]["test_loss"] for s in seeds]
        means[name] = (sum(em) / len(em), sum(loss) / len(loss))
        lines.append(f"| {name} | " + " | ".join(f"{e:.0f}" for e in em) + f" | {stats(em)} | {stats(loss)} |")
    lines += ["", machine_line(), f"`python -m bench.distill --steps {steps} --seeds {','.join(map(str, seeds))} "
              f"--only {','.join(scores)}`", ""]
    if "sft" in means:
        for full, tops in TWINS.items():
            if full not in means:
                continue
            gain, loss_gain = means[full][0] - means["sft"][0], means["sft"][1] - means[full][1]
            lines.append(f"- {full}: {gain:+.1f} exact match over SFT on the mean, test loss {-loss_gain:+.3f}")
            for top in (t for t in tops if t in means):
                top_gain, top_loss_gain = means[top][0] - means["sft"][0], means["sft"][1] - means[top][1]
                lines.append(f"- {top}: {top_gain:+.1f} ({100 * top_gain / gain:.0f}% of {full}'s mean gain), "
                             f"test loss {-top_loss_gain:+.3f} ({100 * top_loss_gain / loss_gain:.0f}% of its)"
                             if gain >= MIN_GAIN and loss_gain > 0 else f"- {top}: {top_gain:+.1f} ({full}'s "
                             "mean gain is within noise: no share defined)")
    return "\n".join(lines) + "\n"


def _suffix(steps: int, seed: int) -> str:
    """How runs of other steps or seeds than the example's are named beside its own."""
    return (f"-{steps}-steps" if steps != STEPS else "") + (f"-seed-{seed}" if seed != SEED else "")


def _newest(folder: Path) -> Path | None:
    files = sorted(folder.glob("*.safetensors"), key=lambda p: p.stat().st_mtime)
    return files[-1] if files else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--layers", type=int, default=10)
    parser.add_argument("--reuse", action="store_true", help="keep the runs a previous invocation finished")
    parser.add_argument("--only", default=",".join(VARIANTS), help="comma list of " + ", ".join(VARIANTS))
    parser.add_argument("--task", default="quickstart", choices=sorted(TASKS))
    parser.add_argument("--seed", type=int, default=SEED, help="the students' training seed (data order, dropout)")
    parser.add_argument("--seeds", help="comma list of seeds: every variant at each, then a table of the means "
                                        "(steps-N-seeds.md; no speed report)")
    args = parser.parse_args()
    task = TASKS[args.task]
    task["out"].mkdir(parents=True, exist_ok=True)
    teacher = teacher_run(task)
    student = student_dir(task["out"], teacher, args.layers)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    if args.seeds:
        seeds = [int(s) for s in args.seeds.split(",")]
        scores: dict[str, dict[int, dict]] = {name: {} for name in names}
        for seed in seeds:
            for name in names:
                run, extra = run_variant(name, task, student, teacher, args.steps, seed, args.reuse)
                after = json.loads((run / "eval.json").read_text())["after"]
                scores[name][seed] = {"exact_match": after["exact_match"], "test_loss": after.get("nll",
                                                                                                   after["loss"])}
                print(f"{name} seed {seed}: exact match {after['exact_match']}", flush=True)
        path = task["out"] / f"steps-{args.steps}-seeds.md"
        path.write_text(over_seeds(scores, seeds, args.steps))
        print(path.read_text())
        return
    runs, figures = [], {}
    for name in names:
        run, extra = run_variant(name, task, student, teacher, args.steps, args.seed, args.reuse)
        runs.append(run)
        figures[name] = extra
        print(f"{name}: exact match {extra['exact_match']}, {extra['wall_s']:.0f} s", flush=True)
    notes = [machine_line(), f"`python -m bench.distill --task {args.task} --steps {args.steps} --layers "
             f"{args.layers}`: every student starts from the same {args.layers}-layer student of the tuned teacher "
             f"and trains {args.steps} steps of 16 on the {args.task} data (full fine-tuning, lr 3e-4 cosine)."]
    notes += gains(figures)
    # runs of other steps or seeds than the example's report beside the main one, not over it
    report_dir = task["out"]
    if (args.steps, args.seed) != (STEPS, SEED):
        report_dir = task["out"] / (f"steps-{args.steps}" + (f"-seed-{args.seed}" if args.seed != SEED else ""))
    paths = student_report(teacher, runs, report_dir, notes)
    print(paths["md"].read_text())


if __name__ == "__main__":
    main()
