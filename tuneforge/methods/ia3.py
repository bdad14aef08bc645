"""(IA)³ through peft (Liu et al., 2022, https://arxiv.org/abs/2205.05638): learned vectors that rescale
the keys, values and feed-forward activations; the fewest trainable parameters of the adapter methods."""

from __future__ import annotations

from pydantic import Field

from tuneforge.methods.base import MethodParams, peft_task_type
from tuneforge.methods.peft_adapter import peft_method


class Ia3Params(MethodParams):
    target_modules: list[str] | None = Field(None, description="modules to rescale; default: peft's choice for the "
                                                               "architecture (keys, values, MLP down projection)")
    feedforward_modules: list[str] | None = Field(None, description="which of those are feed-forward (scaled on "
                                                                    "the input, not the output)")


def ia3_config(params: Ia3Params, model):
    from peft import IA3Config

    return IA3Config(task_type=peft_task_type(model), target_modules=params.target_modules,
                     feedforward_modules=params.feedforward_modules)


METHOD = peft_method("ia3", "(IA)³: learned rescaling of keys, values and MLP activations", Ia3Params, ia3_config,
                     mergeable=True, relative_lr=5.0)
