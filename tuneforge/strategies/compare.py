"""`tuneforge compare`: one task, every method. Each method trains in a fresh process (so its peak memory is
its own) on the same data, steps and seed, at the config's learning rate times the method's `relative_lr`;
then its inference latency (unmerged and merged) and its forgetting on a general set are measured, and the
report (report.md, report.html, charts) says what each cost and gained."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from tuneforge.config import dump_yaml, load_config
from tuneforge.errors import RunDirError
from tuneforge.reports.compare import write_report

QUICK = ["train.max_steps=12", "train.batch_size=8", "eval.max_examples=30", "eval.max_new_tokens=16",
         "eval.batch_size=30"]
QUICK_LM = ["eval.metrics=[loss,exact_match]"]  # a classification task reports its own metrics


def compare(config: str | Path | dict, methods: Sequence[str], out_dir: str | Path, *, quick: bool = False,
            overrides: Sequence[str] = (), quiet: bool = False) -> dict[str, Path]:
    """Train the same task with each method (same data, steps, seed), each in a fresh process so that its
    peak memory is its own, measure each run's inference latency and forgetting, and write report.md,
    report.html and charts into `out_dir`."""
    from tuneforge.methods import get_method
    from tuneforge.runs.measure import base_general_scores, measure_run

    out = Path(out_dir)
    base = load_config(config, overrides)
    lm = base.run.task == "causal_lm"
    base = load_config(config, [*(QUICK + (QUICK_LM if lm else []) if quick else []), *overrides])
    for name in methods:
        get_method(name)  # every name is checked before anything trains
    # forgetting on a general set is a language model's measure
    general = base_general_scores(base.run.model, base.run.train.precision) if lm else None
    runs = []
    for index, name in enumerate(methods):
        cfg = base.run.model_copy(deep=True)
        cfg.method = type(cfg.method)(name=name)
        cfg.train.lr = base.run.train.lr * get_method(name).relative_lr
        cfg.train.packing = cfg.train.packing and get_method(name).supports_packing
        cfg.eval.compare_base = index == 0  # the base model's task scores, once
        cfg.output.dir, cfg.output.overwrite = str(out / name), True
        for spec in (*cfg.data.train, *(cfg.data.test or [])):
            spec.path = base.resolve_path(spec.path)
        if not quiet:
            print(f"[{index + 1}/{len(methods)}] {name}: training (log: {out / f'{name}.log'})", flush=True)
        runs.append(_train_in_fresh_process(cfg, out, name))
        measure_run(runs[-1], general)
    title = f"Method comparison: {base.source.name if base.source else 'config'}" + (" (--quick)" if quick else "")
    return write_report(out, runs, title)


def _train_in_fresh_process(cfg, out: Path, name: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / f"{name}.yaml"
    config_path.write_text(dump_yaml(cfg))
    with (out / f"{name}.log").open("w") as log:
        code = subprocess.call([sys.executable, "-m", "tuneforge.cli", "train", str(config_path), "--quiet"],
                               stdout=log, stderr=subprocess.STDOUT)
    if code != 0:
        tail = (out / f"{name}.log").read_text().strip().splitlines()[-3:]
        raise RunDirError(f"compare: training with method '{name}' failed (exit {code}): {' | '.join(tail)}\n"
                          f"  fix: see {out / f'{name}.log'}; run `tuneforge train {config_path}` to reproduce")
    return Path(cfg.output.dir)
