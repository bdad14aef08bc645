"""Full fine-tuning: every parameter is trained; the whole model is saved."""

from __future__ import annotations

from tuneforge.methods.base import Method, MethodParams, run_subdir, unchanged
from tuneforge.models import no_progress_bars

MODEL_DIR = "model"


class FullParams(MethodParams):
    pass


def apply(model, params: FullParams):
    for param in model.parameters():
        param.requires_grad_(True)
    return model


def save(model, run_dir) -> None:
    with no_progress_bars():
        model.save_pretrained(run_subdir(run_dir, MODEL_DIR), safe_serialization=True)


def load(run_dir, load_base):
    """The saved model, by the class its config names (a causal LM, or a classifier with its head)."""
    import json

    import torch
    import transformers

    folder = run_subdir(run_dir, MODEL_DIR)
    architecture = (json.loads((folder / "config.json").read_text()).get("architectures") or [""])[0]
    factory = getattr(transformers, architecture, None) or transformers.AutoModelForCausalLM
    with no_progress_bars():
        return factory.from_pretrained(folder, dtype=torch.float32)


METHOD = Method("full", "train every parameter", FullParams, apply, save, load, MODEL_DIR, merge=unchanged,
                relative_lr=0.025)
