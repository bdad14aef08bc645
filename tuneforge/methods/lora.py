"""LoRA through peft (Hu et al., 2021, https://arxiv.org/abs/2106.09685): W + (alpha/r) B A, only A and B
trained. Saved in peft's adapter format, so `peft.PeftModel.from_pretrained` and serving stacks load it."""

from __future__ import annotations

import warnings
from contextlib import contextmanager

from pydantic import Field

from tuneforge.methods.base import Method, MethodParams, adapter_disabled_reference, run_subdir
from tuneforge.models import no_progress_bars

ADAPTER_DIR = "adapter"


class LoraParams(MethodParams):
    r: int = Field(16, ge=1)
    alpha: float = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: str | list[str] = Field("all-linear", description="'all-linear' or module names")
    bias: str = Field("none", pattern="^(none|all|lora_only)$")


def apply(model, params: LoraParams):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=params.r, lora_alpha=params.alpha, lora_dropout=params.dropout,
                        target_modules=params.target_modules, bias=params.bias, task_type="CAUSAL_LM")
    with _quiet_peft():
        return get_peft_model(model, config)


def save(model, run_dir) -> None:
    with no_progress_bars():
        model.save_pretrained(run_subdir(run_dir, ADAPTER_DIR), safe_serialization=True)


def load(run_dir, load_base):
    from peft import PeftModel

    with _quiet_peft():
        return PeftModel.from_pretrained(load_base(), run_subdir(run_dir, ADAPTER_DIR))


@contextmanager
def _quiet_peft():
    """peft asks transformers a deprecated question when wrapping a model; the warning is not actionable."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


METHOD = Method("lora", "low-rank adapters on linear layers (peft)", LoraParams, apply, save, load, ADAPTER_DIR,
                reference=adapter_disabled_reference)
