"""Numeric precision: bf16 frozen weights under bf16 autocast where the hardware does bf16 matmuls fast
(CUDA, or a CPU with AMX / AVX512-BF16), fp32 elsewhere. Trainable parameters always stay fp32.

On a CPU without bf16 instructions (e.g. AVX2 only) bf16 matmuls are emulated and many times slower
than fp32, which is why 'auto' looks at the CPU flags rather than assuming bf16 pays.

Objectives that compare the policy with a reference (DPO and family, KTO, the KL and ratio terms of
GRPO/RLOO/PPO) need log π − log π_ref to be right, and under bf16 autocast it is rounding noise: an adapter's
small change flips bf16 roundings throughout the network, and the two forwards' rounding errors (about 0.05
per logit) do not cancel. On the default model with a LoRA whose B matrices are N(0, (2e-4)²), the summed
log-ratio of a 60-token sequence is −0.0075 in fp32 and −0.039 (or +0.68, by seed) under bf16 autocast
(`python -m bench.bf16_ratio`). Their forwards therefore compute in fp32 over the bf16-stored weights
(`exact_ratios`): each frozen weight is widened as it is used, and never kept widened, so the weights still
take half the memory; only the rounding of the stored weights remains (about 6% of the log-ratio there),
the same for policy and reference. Generation (sampling, evaluation) stays in bf16.
"""

from __future__ import annotations

from contextlib import nullcontext
from functools import partial
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_has_fast_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in BF16_CPU_FLAGS)


def resolve_precision(requested: str, device: torch.device) -> str:
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def pick_device() -> torch.device:
    """The GPU when there is one, else the CPU; on a GPU, the attention kernels that suit tuneforge's batches.

    cuDNN's SDPA kernel builds an execution plan per input shape, and packed batches change shape every
    step: on an H100 its backward cost 26 ms of CPU time per call on the Llama-3-8B shape
    (`python -m bench.profile_sft --model ...`), which left the GPU idle for a third of each step. PyTorch's
    flash and memory-efficient kernels take the same inputs without that cost.
    """
    if not torch.cuda.is_available():
        return torch.device("cpu")
    torch.backends.cuda.enable_cudnn_sdp(False)
    return torch.device("cuda")


def cast_frozen_weights(model: torch.nn.Module, precision: str) -> None:
    """bf16 for frozen floating-point parameters, fp32 for trainable ones.

    In bf16, peft's adapter layers are also told not to widen their input to the fp32 adapter weights: under
    bf16 autocast the matmul narrows it straight back, so the cast only copied every adapted layer's
    activations twice (19% of GPU time in a LoRA step of the Llama-3-8B shape on an H100). The values that
    reach the matmul are the same either way. A module other than a linear layer whose parameters are partly
    trained (BitFit's LayerNorm bias) keeps them all fp32: its kernel wants one dtype, and autocast narrows only
    matmuls' operands.
    """
    mixed = {id(p) for module in model.modules() if not isinstance(module, torch.nn.Linear)
             for own in [list(module.parameters(recurse=False))] if any(p.requires_grad for p in own) for p in own}
    for param in model.parameters():
        if not param.is_floating_point():
            continue
        keep = param.requires_grad or id(param) in mixed or precision == "fp32"
        wanted = torch.float32 if keep else torch.bfloat16
        if param.dtype != wanted:
            param.data = param.data.to(wanted)
    for module in model.modules():
        if hasattr(module, "_cast_input_dtype"):  # peft's BaseTunerLayer
            module.cast_input_dtype_enabled = precision != "bf16"


def dtype(precision: str, exact_ratios: bool = False) -> torch.dtype:
    """The compute dtype of a precision setting (fp32 where the objective needs exact log-ratios)."""
    return torch.bfloat16 if precision == "bf16" and not exact_ratios else torch.float32


def move_to(model: torch.nn.Module, device: torch.device) -> None:
    """Move the model, except a quantized one, which was placed on its device as it loaded (and refuses .to)."""
    if not getattr(model, "is_quantized", False) and not getattr(getattr(model, "base_model", None), "is_quantized",
                                                                 False):
        model.to(device)


def inference_placement(requested: str) -> tuple[torch.device, str]:
    """The device, and the precision a run's setting resolves to there."""
    device = pick_device()
    return device, resolve_precision(requested, device)


def ready_for_inference(model: torch.nn.Module, precision: str, device: torch.device) -> torch.nn.Module:
    """Weights in the precision (a method's trained parameters, which require grad until now, stay fp32 as in
    training), on the device, in eval mode, nothing requiring grad."""
    cast_frozen_weights(model, precision)
    move_to(model, device)
    return model.requires_grad_(False).eval()


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Keep only each layer's input in the forward and recompute the rest during backward (non-reentrant,
    so frozen inputs and PEFT adapters need no special handling)."""
    enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.2x; the old name warns
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def autocast_factory(precision: str, device: torch.device, *, exact_ratios: bool = False):
    """A zero-argument callable returning the context for forward passes: bf16 autocast, or with
    `exact_ratios` (an objective that compares log-probabilities with a reference) fp32 compute over the
    bf16 weights."""
    if precision == "bf16":
        return WidenedWeights if exact_ratios else partial(torch.autocast, device_type=device.type,
                                                           dtype=torch.bfloat16)
    return nullcontext


def describe(precision: str, exact_ratios: bool = False) -> str:
    if precision == "bf16" and exact_ratios:
        return ("bf16 frozen weights, fp32 compute (the objective compares log-probabilities with a reference; "
                "bf16 rounding would swamp the difference), fp32 trainable weights")
    return {"bf16": "bf16 frozen weights + bf16 autocast, fp32 trainable weights", "fp32": "fp32"}[precision]


class WidenedWeights(TorchFunctionMode):
    """Inside: any operation that meets a bf16 tensor (a frozen weight, or what was computed from one) computes
    in fp32, widening the bf16 operands as it goes; a frozen weight's widened copy is not kept for backward
    (`_linear_bf16_weight`). In-place operations are left alone (widening would write into a copy)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not _meets_bf16(args, kwargs) or _in_place(func) or "out" in kwargs:
            return func(*args, **kwargs)
        if func is torch.nn.functional.linear:
            return _linear_bf16_weight(*args, **kwargs)
        return func(*_widened(args), **{k: _widened(v) for k, v in kwargs.items()})


def _in_place(func) -> bool:
    """`add_`, `copy_`, `__iadd__`, `__setitem__` ...: they write into their first operand."""
    name = getattr(func, "__name__", "")
    if name.startswith("__") and name.endswith("__"):
        return name.startswith("__i") or name == "__setitem__"
    return name.endswith("_")


def _meets_bf16(args, kwargs) -> bool:
    return any(isinstance(a, torch.Tensor) and a.dtype == torch.bfloat16 for a in (*args, *kwargs.values()))


def _widened(value):
    if isinstance(value, torch.Tensor):
        return value.float() if value.dtype == torch.bfloat16 else value
    if isinstance(value, list | tuple):
        return type(value)(_widened(v) for v in value)
    return value


def _linear_bf16_weight(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None):
    if weight.dtype == torch.bfloat16 and not weight.requires_grad and (bias is None or not bias.requires_grad):
        return _LinearBf16Weight.apply(input.float(), weight, None if bias is None else bias.float())
    return torch.nn.functional.linear(*_widened((input, weight, bias)))


class _LinearBf16Weight(torch.autograd.Function):
    """y = x Wᵀ + b in fp32 with W stored in bf16. What must be exact is the forward's value (the log-ratio);
    the gradient through a frozen weight is computed as bf16 training computes it, a bf16 matmul (three times
    the speed of fp32 on an AMX CPU, and bf16's own gradient precision), from the bf16 weight itself: no fp32
    copy of a weight is kept for backward (that would double the weights' memory during a step)."""

    @staticmethod
    def forward(ctx, input, weight, bias):
        ctx.save_for_backward(weight)
        return torch.nn.functional.linear(input, weight.float(), bias)

    @staticmethod
    def backward(ctx, grad_output):
        (weight,) = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        return (grad_output.to(torch.bfloat16) @ weight).float(), None, None

