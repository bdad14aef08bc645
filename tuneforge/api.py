"""The Python API; the CLI calls the same functions, so both take one code path."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from tuneforge.config import LoadedConfig, dump_yaml, load_config
from tuneforge.engine.run import RunResult, run
from tuneforge.engine.serving import AdapterSet, load_adapter_set
from tuneforge.errors import RunDirError
from tuneforge.reports.compare import write_report
from tuneforge.reports.plots import plot_loss

# Learning rates differ by method as their papers and peft's guides advise: a method with few, sensitive
# trainable parameters (prompts, scaling vectors, biases) needs a larger step, full fine-tuning a far smaller
# one. `compare` scales the config's learning rate (tuned for LoRA) by these factors.
COMPARE_LR_SCALE = {"full": 0.025, "freeze": 0.05, "prompt": 10.0, "prefix": 5.0, "ptuning": 5.0, "ia3": 5.0,
                    "bitfit": 5.0}
QUICK = ["train.max_steps=12", "train.batch_size=8", "eval.max_examples=30", "eval.max_new_tokens=16",
         "eval.batch_size=30", "eval.metrics=[loss,exact_match]"]


def train(config: str | Path | dict | LoadedConfig, overrides: Sequence[str] = (), *, resume: bool = False,
          force: bool = False, quiet: bool = False) -> RunResult:
    """Fine-tune as the config says and return where the run went and what it measured.

    `config` is a YAML path, a dict of the same shape, or an already loaded config; `overrides` are
    `section.key=value` strings as on the command line. `force` lets a resume continue although the data,
    training config or tokenizer differ from the checkpoint's.
    """
    loaded = config if isinstance(config, LoadedConfig) else load_config(config, overrides)
    result = run(loaded, resume=resume, force=force, quiet=quiet)
    plot_loss(result.run_dir)
    return result


def compare(config: str | Path | dict, methods: Sequence[str], out_dir: str | Path, *, quick: bool = False,
            overrides: Sequence[str] = (), quiet: bool = False) -> dict[str, Path]:
    """Train the same task with each method (same data, steps, seed), each in a fresh process so that its
    peak memory is its own, measure each run's inference latency and forgetting, and write report.md,
    report.html and charts into `out_dir`."""
    from tuneforge.engine.measure import base_general_scores, measure_run
    from tuneforge.methods import get_method

    out = Path(out_dir)
    base = load_config(config, [*(QUICK if quick else []), *overrides])
    for name in methods:
        get_method(name)  # every name is checked before anything trains
    general = base_general_scores(base.run.model, base.run.train.precision)
    runs = []
    for index, name in enumerate(methods):
        cfg = base.run.model_copy(deep=True)
        cfg.method = type(cfg.method)(name=name)
        cfg.train.lr = base.run.train.lr * COMPARE_LR_SCALE.get(name, 1.0)
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


__all__ = ["AdapterSet", "RunResult", "compare", "load_adapter_set", "train"]
