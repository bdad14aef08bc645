"""The shape every method has: parameters, how to apply it, how to save and reload what it trained."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict


class MethodParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


def frozen_copy_reference(model) -> Callable[[], AbstractContextManager]:
    """A frozen copy of the model as it is now: the reference for methods that change the base weights."""
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    return lambda: nullcontext(reference)


def unchanged(model):
    """Methods that train the model's own weights: the trained model is already a plain model."""
    return model


def adapter_disabled_reference(model) -> Callable[[], AbstractContextManager]:
    """For a peft model the base is the reference: the same weights with the adapter switched off, no copy."""

    @contextmanager
    def opened():
        with model.disable_adapter():
            yield model

    return opened


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    params: type[MethodParams]
    apply: Callable  # (model, params) -> model with only the trained parameters requiring grad
    save: Callable  # (model, run_dir) -> None; writes run_dir/<output_subdir>
    load: Callable  # (run_dir, load_base: () -> model) -> trained model, its trained parameters requiring grad
    output_subdir: str
    # (model) -> a function opening the frozen reference model: the model as it is now, before training
    reference: Callable[..., Callable[[], AbstractContextManager]] = frozen_copy_reference
    # (parameter name, params) -> learning-rate multiplier for that parameter (e.g. LoRA+)
    lr_scale: Callable[[str, MethodParams], float] | None = None
    supports_packing: bool = True  # False where the method prepends virtual tokens to every row
    # (params, compute dtype) -> extra from_pretrained arguments for the base (e.g. a 4-bit quantization config)
    base_kwargs: Callable[[MethodParams, object], dict] | None = None

    # (trained model) -> a plain transformers model with the training folded into its weights; None: cannot merge
    merge: Callable | None = None
    # the learning rate this method wants relative to LoRA's, as its paper and peft's guides advise: few,
    # sensitive trainable parameters (prompts, scaling vectors, biases) need larger steps, full fine-tuning far
    # smaller ones; `tuneforge compare` scales the config's learning rate (tuned for LoRA) by it
    relative_lr: float = 1.0

    def load_base_kwargs(self, params: MethodParams, compute_dtype) -> dict:
        return self.base_kwargs(params, compute_dtype) if self.base_kwargs else {}


def trainable_summary(model) -> tuple[int, int]:
    """(trainable parameters, all parameters), counting shared tensors once, and a 4-bit quantized weight
    (stored two values per byte) by the shape it stands for."""
    seen, trainable, total = set(), 0, 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        quant_state = getattr(param, "quant_state", None)
        count = math.prod(quant_state.shape) if quant_state is not None else param.numel()
        total += count
        trainable += count if param.requires_grad else 0
    return trainable, total


HEAD_NAMES = ("pre_classifier", "classifier", "score")  # what transformers calls a classification head
# BERT's pooler (dense + tanh over [CLS]) feeds its classifier: part of the head. Named by its linear layer, which
# holds its weights: peft cannot merge a whole non-linear module kept in modules_to_save (IA3's unload fails)
POOLER = "pooler.dense"


def head_modules(model) -> list[str]:
    """The names of a classifier's head modules (its pooler too, when the head reads one), or [] for a causal
    LM."""
    if peft_task_type(model) == "CAUSAL_LM":
        return []
    pooled = peft_task_type(model) == "SEQ_CLS" and _has_pooler(model)
    return [n for n in HEAD_NAMES if getattr(model, n, None) is not None] + ([POOLER] if pooled else [])


def _has_pooler(model) -> bool:
    return any(name.endswith("." + POOLER) for name, _ in model.named_modules())


def peft_task_type(model) -> str:
    """peft's task type for the model's class: a classification head is then kept trainable and saved with the
    adapter (`modules_to_save`)."""
    name = type(model).__name__
    if name.endswith("ForSequenceClassification"):
        return "SEQ_CLS"
    return "TOKEN_CLS" if name.endswith("ForTokenClassification") else "CAUSAL_LM"


def train_head(model) -> None:
    """A classification head starts untrained, so it trains under every method: peft's wrapper already trains
    and saves it (`modules_to_save`, see `peft_adapter`); for the others its parameters (and BERT's pooler's)
    are marked trained here, and saved with what the method saves."""
    if hasattr(model, "peft_config"):
        return
    names = head_modules(model)
    if not any(n in HEAD_NAMES for n in names):
        from tuneforge.errors import ModelError

        raise ModelError(f"cannot find the classification head of {type(model).__name__} (looked for "
                         f"{', '.join(HEAD_NAMES)})\n  fix: use a model class transformers gives such a head")
    for name, module in model.named_modules():
        if any(name == n or name.endswith("." + n) for n in names):
            module.requires_grad_(True)


def run_subdir(run_dir: str | Path, name: str) -> Path:
    return Path(run_dir) / name

