"""`tuneforge merge`: several LoRA runs on one base folded into one adapter by peft's `add_weighted_adapter`
(linear, TIES, DARE), written as a run directory that `eval`, `chat` and `export` accept like a trained one."""

from __future__ import annotations

import math
import shutil
from collections.abc import Sequence
from pathlib import Path

from tuneforge.config import dump_yaml
from tuneforge.errors import ConfigError
from tuneforge.methods import validate_method_params
from tuneforge.methods.peft_adapter import ADAPTER_DIR
from tuneforge.runs import paths
from tuneforge.runs.identity import weights_record
from tuneforge.runs.layout import COMPLETE, CONFIG_FILE, RUN_FILE, TOKENIZER_DIR, write_json
from tuneforge.runs.serving import adapter_config, load_adapter_set

HOWS = ("linear", "ties", "dare_linear", "dare_ties", "cat", "magnitude_prune")
LORA_METHODS = ("lora", "qlora")


def merge_runs(runs: Sequence[str | Path], out: str | Path, *, how: str = "ties",
               weights: Sequence[float] | None = None, density: float = 0.5, overwrite: bool = False,
               seed: int = 0) -> Path:
    """Merge the runs' LoRA adapters into `out` (a new run directory: the first run's config and tokenizer,
    the merged adapter, run.json saying how it was made). `density` is the share of each adapter's weights
    TIES and DARE keep; `seed` fixes DARE's random drop."""
    runs = [Path(r) for r in runs]
    if len(runs) < 2:
        raise ConfigError("merge needs at least two runs\n  fix: tuneforge merge RUN_A RUN_B ... --out DIR")
    if how not in HOWS:
        raise ConfigError(f"--how {how!r} is not a merge\n  fix: use one of {', '.join(HOWS)}")
    weights = list(weights) if weights else [1.0 / len(runs) if how in ("linear", "cat") else 1.0] * len(runs)
    if not all(math.isfinite(w) for w in weights):
        raise ConfigError(f"--weights {','.join(map(str, weights))}: every weight must be a finite number\n  fix: "
                          "e.g. --weights 0.5,0.5")
    if len(weights) != len(runs):
        raise ConfigError(f"--weights has {len(weights)} values for {len(runs)} runs\n  fix: give one weight per "
                          "run, e.g. --weights 0.5,0.5")
    if not 0 < density <= 1:
        raise ConfigError(f"--density {density}: must be in (0, 1]\n  fix: e.g. --density 0.5")
    out = Path(out)
    paths.require_new_output(out, "--out")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(f"--out {out} is not empty\n  fix: choose another directory or pass --overwrite")
        paths.refuse_unsafe_replace(out, "run.json", "--out", runs)
    names = {f"run{i}": run for i, run in enumerate(runs)}
    configs = {str(run): adapter_config(name, run).method for name, run in names.items()}
    methods = {run: "dora" if getattr(validate_method_params(m), "dora", False) else m.name
               for run, m in configs.items()}
    if any(m not in LORA_METHODS for m in methods.values()):  # DoRA's magnitudes would be dropped without a word
        raise ConfigError(f"merge folds plain LoRA adapters; these runs trained {methods}\n  fix: merge runs of "
                          "method lora or qlora (without dora), or export each run on its own (export --merge)")
    adapters = load_adapter_set(names)
    model = adapters.model
    kwargs = {"density": density} if how in ("ties", "dare_linear", "dare_ties", "magnitude_prune") else {}
    import torch

    torch.manual_seed(seed)  # DARE drops weights at random: the same merge twice gives the same adapter
    try:
        model.add_weighted_adapter(list(names), weights, "merged", combination_type=how, **kwargs)
    except ValueError as exc:  # e.g. TIES over adapters of different ranks
        raise ConfigError(f"peft cannot merge these adapters with {how}: {exc}\n  fix: use --how cat or linear, or "
                          "runs trained with the same LoRA rank and target modules") from None
    merged = {name: p for name, p in model.named_parameters() if ".merged." in name}
    bad = next((name for name, p in merged.items() if not torch.isfinite(p).all()), None)
    if bad is not None:  # nothing NaN or inf is written as a finished run
        raise ConfigError(f"the merged adapter holds NaN or inf values ({bad}): --weights "
                          f"{','.join(map(str, weights))} are too large for these adapters\n  fix: use weights of "
                          "ordinary size, e.g. --weights 0.5,0.5")
    with paths.staged(out, "--out") as staging:
        model.save_pretrained(staging / "peft", selected_adapters=["merged"], safe_serialization=True)
        (staging / "peft" / "merged").rename(staging / ADAPTER_DIR)
        shutil.rmtree(staging / "peft")
        first = adapters.configs["run0"]
        (staging / CONFIG_FILE).write_text(dump_yaml(first))
        adapters.tokenizer.save_pretrained(staging / TOKENIZER_DIR)
        # what it is: its own adapter on the inputs' base (two merges of other weights never share an identity)
        write_json(staging / RUN_FILE, {
            "status": COMPLETE, "merged": {"runs": [str(r) for r in runs], "how": how, "weights": weights,
                                           "density": density if kwargs else None, "seed": seed},
            **weights_record(staging, first.model)})
    return out
