"""What every peft-backed method shares: wrapping the model with a peft config, saving and loading in
peft's adapter format (so `peft.PeftModel.from_pretrained` and serving stacks load it), and the base model
as the reference (the adapter switched off: no second copy)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from contextlib import contextmanager

from tuneforge.methods.base import Method, MethodParams, adapter_disabled_reference, head_modules, run_subdir
from tuneforge.models import no_progress_bars

ADAPTER_DIR = "adapter"


def peft_method(name: str, summary: str, params: type[MethodParams], make_config: Callable, *,
                lr_scale: Callable | None = None, supports_packing: bool = True,
                base_kwargs: Callable | None = None, mergeable: bool = False, relative_lr: float = 1.0) -> Method:
    """A registry entry for a peft method; `make_config(params, model)` builds its peft config."""

    def apply(model, chosen: MethodParams):
        from peft import get_peft_model

        config = make_config(chosen, model)
        if head_modules(model):  # a classifier's new head (and BERT's pooler) trains and is saved with the adapter
            config.modules_to_save = sorted(set(config.modules_to_save or []) | set(head_modules(model)))
        with quiet_peft():
            return get_peft_model(model, config)

    return Method(name, summary, params, apply, save, load, ADAPTER_DIR, reference=adapter_disabled_reference,
                  lr_scale=lr_scale, supports_packing=supports_packing, base_kwargs=base_kwargs,
                  merge=merge_and_unload if mergeable else None, relative_lr=relative_lr)


def merge_and_unload(model):
    """Fold the adapter into the base weights (peft) and return the plain transformers model."""
    with quiet_peft():
        return model.merge_and_unload()


def save(model, run_dir) -> None:
    with no_progress_bars():
        model.save_pretrained(run_subdir(run_dir, ADAPTER_DIR), safe_serialization=True)


def load(run_dir, load_base):
    """The base with the saved adapter; the adapter's weights are marked as the trained ones (requiring grad),
    so they keep the dtype they trained in. peft's `is_trainable` refuses prompt-learning adapters, whose
    prompt encoder is marked here instead."""
    from peft import PeftConfig, PeftModel

    folder = run_subdir(run_dir, ADAPTER_DIR)
    prompt_learning = PeftConfig.from_pretrained(folder).is_prompt_learning
    with quiet_peft():
        model = PeftModel.from_pretrained(load_base(), folder, is_trainable=not prompt_learning)
    if prompt_learning:
        model.prompt_encoder.requires_grad_(True)
    return model


@contextmanager
def quiet_peft():
    """peft asks transformers a deprecated question when wrapping a model; the warning is not actionable."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield
