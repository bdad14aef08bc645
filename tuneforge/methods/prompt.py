"""Prompt-learning methods through peft: the base model is untouched and a few learned virtual tokens
steer it. They prepend to every sequence, so rows cannot be packed (`supports_packing=False`).

- `prompt`: soft prompt tuning (Lester et al., 2021, https://arxiv.org/abs/2104.08691), learned input
  embeddings, started at random or from the embeddings of a text.
- `prefix`: prefix tuning (Li & Liang, 2021, https://arxiv.org/abs/2101.00190), learned keys and values
  at every layer.
- `ptuning`: P-tuning (Liu et al., 2021, https://arxiv.org/abs/2103.10385), virtual token embeddings
  produced by a small trained prompt encoder (an MLP).
"""

from __future__ import annotations

from pydantic import Field

from tuneforge.methods.base import MethodParams, peft_task_type
from tuneforge.methods.peft_adapter import peft_method


class PromptParams(MethodParams):
    num_virtual_tokens: int = Field(20, ge=1, le=512)
    init_text: str | None = Field(None, description="start from this text's token embeddings (repeated to length); "
                                                    "default: random")


class PrefixParams(MethodParams):
    num_virtual_tokens: int = Field(20, ge=1, le=512)


class PtuningParams(MethodParams):
    num_virtual_tokens: int = Field(20, ge=1, le=512)
    encoder_hidden_size: int = Field(256, ge=1, description="hidden size of the prompt encoder MLP")


def prompt_config(params: PromptParams, model):
    from peft import PromptTuningConfig

    if params.init_text is None:
        return PromptTuningConfig(task_type=peft_task_type(model), num_virtual_tokens=params.num_virtual_tokens,
                                  prompt_tuning_init="RANDOM")
    return PromptTuningConfig(task_type=peft_task_type(model), num_virtual_tokens=params.num_virtual_tokens,
                              prompt_tuning_init="TEXT", prompt_tuning_init_text=params.init_text,
                              tokenizer_name_or_path=model.name_or_path)


def prefix_config(params: PrefixParams, model):
    from peft import PrefixTuningConfig

    return PrefixTuningConfig(task_type=peft_task_type(model), num_virtual_tokens=params.num_virtual_tokens)


def ptuning_config(params: PtuningParams, model):
    from peft import PromptEncoderConfig

    return PromptEncoderConfig(task_type=peft_task_type(model), num_virtual_tokens=params.num_virtual_tokens,
                               encoder_hidden_size=params.encoder_hidden_size)


PROMPT = peft_method("prompt", "soft prompt tuning: learned virtual input tokens (random or text init)",
                     PromptParams, prompt_config, supports_packing=False, relative_lr=10.0)
PREFIX = peft_method("prefix", "prefix tuning: learned keys and values at every layer", PrefixParams,
                     prefix_config, supports_packing=False, relative_lr=5.0)
PTUNING = peft_method("ptuning", "P-tuning: virtual tokens from a small trained prompt encoder", PtuningParams,
                      ptuning_config, supports_packing=False, relative_lr=5.0)
