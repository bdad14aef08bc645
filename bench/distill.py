"""Distillation on the quickstart task: a student of a third of the default model's layers (made from the tuned
teacher with `tuneforge student make`) trained for the same steps on the same data with SFT alone, `kd` over the
whole vocabulary, `kd` over the teacher's cached top-32, `seqkd` and `gkd`; then the teacher and every student
measured side by side (`tuneforge.reports.distill`), with the teacher cache's disk cost beside what a
full-vocabulary cache would take.

    python -m bench.distill [--steps 50] [--layers 10] [--reuse] [--only kd,sft]

The teacher is runs/quickstart (`make demo`; trained here when missing). Report: bench/results/distill/.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import yaml

from bench.common import machine_line
from tuneforge.api import train
from tuneforge.config import ModelConfig, tuneforge_home
from tuneforge.engine.export import merged_model
from tuneforge.engine.student import make_student
from tuneforge.reports.distill import write_report

ROOT = Path(__file__).parents[1]
OUT = ROOT / "bench" / "results" / "distill"
TEACHER = ROOT / "runs" / "quickstart"

# what each student trains with (the rest of examples/distill_kd.yaml is shared)
VARIANTS: dict[str, dict] = {
    "sft": {"name": "sft"},
    "kd": {"name": "kd", "alpha": 0.5},
    "kd-t2": {"name": "kd", "alpha": 0.9, "temperature": 2.0},
    "kd-top32": {"name": "kd", "alpha": 0.5, "top_k": 32},
    "seqkd": {"name": "seqkd"},
    "gkd": {"name": "gkd", "lam": 0.5, "max_new_tokens": 16},
    "gkd-sft": {"name": "gkd", "lam": 0.5, "alpha": 0.5, "max_new_tokens": 16},  # SFT on the data's answers too
}


def teacher_run() -> Path:
    if not (TEACHER / "eval.json").is_file():
        config = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
        train({**config, "output": {"dir": str(TEACHER), "overwrite": True}}, quiet=True)
    return TEACHER


def student_dir(teacher: Path, layers: int) -> Path:
    path = OUT / f"student-{layers}"
    if not (path / "config.json").is_file():
        model, tokenizer, _ = merged_model(teacher)
        make_student(ModelConfig(path=str(teacher)), layers, path, model=model, tokenizer=tokenizer)
    return path


def run_variant(name: str, student: Path, teacher: Path, steps: int, reuse: bool) -> tuple[Path, dict]:
    out = OUT / "runs" / name
    if reuse and (out / "eval.json").is_file():
        return out, json.loads((out / "bench.json").read_text())
    config = yaml.safe_load((ROOT / "examples" / "distill_kd.yaml").read_text())
    objective = dict(VARIANTS[name])
    if objective["name"] != "sft":
        objective["teacher"] = str(teacher)
    caches = set((tuneforge_home() / "cache" / "teacher").glob("*.safetensors"))
    started = time.perf_counter()
    result = train({**config, "model": str(student), "objective": objective,
                    "train": {**config["train"], "max_steps": steps},
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


def _newest(folder: Path) -> Path | None:
    files = sorted(folder.glob("*.safetensors"), key=lambda p: p.stat().st_mtime)
    return files[-1] if files else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--layers", type=int, default=10)
    parser.add_argument("--reuse", action="store_true", help="keep the runs a previous invocation finished")
    parser.add_argument("--only", default=",".join(VARIANTS), help="comma list of " + ", ".join(VARIANTS))
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    teacher = teacher_run()
    student = student_dir(teacher, args.layers)
    runs, figures = [], {}
    for name in [n.strip() for n in args.only.split(",") if n.strip()]:
        run, extra = run_variant(name, student, teacher, args.steps, args.reuse)
        runs.append(run)
        figures[name] = extra
        print(f"{name}: exact match {extra['exact_match']}, {extra['wall_s']:.0f} s", flush=True)
    notes = [machine_line(), f"`python -m bench.distill --steps {args.steps} --layers {args.layers}`: "
             f"every student starts from the same {args.layers}-layer student of the tuned teacher and trains "
             f"{args.steps} steps of 16 on the quickstart data (full fine-tuning, lr 3e-4 cosine)."]
    if "sft" in figures and "kd" in figures:
        gain = figures["kd"]["exact_match"] - figures["sft"]["exact_match"]
        notes.append(f"kd over SFT alone: {gain:+.1f} exact match")
        if "kd-top32" in figures and "cache" in figures["kd-top32"]:
            cache = figures["kd-top32"]["cache"]
            top = figures["kd-top32"]["exact_match"] - figures["sft"]["exact_match"]
            kept = (f"it keeps {100 * top / gain:.0f}% of full-vocabulary kd's gain" if gain > 0 else
                    f"full-vocabulary kd gained nothing over SFT here, so no share of a gain is defined (top-32: "
                    f"{top:+.1f})")
            notes.append(f"top-32 cache: {cache['bytes'] / 2**20:.1f} MiB for {cache['positions']} trained positions "
                         f"({100 * cache['bytes'] / cache['full_vocabulary_bytes_fp32']:.2f}% of a full-vocabulary "
                         f"fp32 cache, {cache['full_vocabulary_bytes_fp32'] / 2**30:.1f} GiB); {kept}")
    paths = write_report(OUT, teacher, runs, notes)
    print(paths["md"].read_text())


if __name__ == "__main__":
    main()
