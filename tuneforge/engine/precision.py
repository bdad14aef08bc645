"""Numeric precision: bf16 frozen weights under bf16 autocast where the hardware does bf16 matmuls fast
(CUDA, or a CPU with AMX / AVX512-BF16), fp32 elsewhere. Trainable parameters always stay fp32.

On a CPU without bf16 instructions (e.g. AVX2 only) bf16 matmuls are emulated and many times slower
than fp32, which is why 'auto' looks at the CPU flags rather than assuming bf16 pays.
"""

from __future__ import annotations

from contextlib import nullcontext
from functools import partial
from pathlib import Path

import torch

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
    reach the matmul are the same either way.
    """
    for param in model.parameters():
        if not param.is_floating_point():
            continue
        wanted = torch.float32 if param.requires_grad or precision == "fp32" else torch.bfloat16
        if param.dtype != wanted:
            param.data = param.data.to(wanted)
    for module in model.modules():
        if hasattr(module, "_cast_input_dtype"):  # peft's BaseTunerLayer
            module.cast_input_dtype_enabled = precision != "bf16"


def dtype(precision: str) -> torch.dtype:
    """The compute dtype of a precision setting."""
    return torch.bfloat16 if precision == "bf16" else torch.float32


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


def autocast_factory(precision: str, device: torch.device):
    """A zero-argument callable returning the autocast context for forward passes."""
    if precision == "bf16":
        return partial(torch.autocast, device_type=device.type, dtype=torch.bfloat16)
    return nullcontext


def describe(precision: str) -> str:
    return {"bf16": "bf16 frozen weights + bf16 autocast, fp32 trainable weights", "fp32": "fp32"}[precision]

