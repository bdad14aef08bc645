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


def cast_frozen_weights(model: torch.nn.Module, precision: str) -> None:
    """bf16 for frozen floating-point parameters, fp32 for trainable ones."""
    for param in model.parameters():
        if not param.is_floating_point():
            continue
        wanted = torch.float32 if param.requires_grad or precision == "fp32" else torch.bfloat16
        if param.dtype != wanted:
            param.data = param.data.to(wanted)


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
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return device, resolve_precision(requested, device)


def ready_for_inference(model: torch.nn.Module, precision: str, device: torch.device) -> torch.nn.Module:
    """Weights in the precision, on the device, in eval mode."""
    cast_frozen_weights(model, precision)
    move_to(model, device)
    return model.eval()


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Keep only each layer's input in the forward and recompute the rest during backward (non-reentrant,
    so frozen inputs and PEFT adapters need no special handling)."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def autocast_factory(precision: str, device: torch.device):
    """A zero-argument callable returning the autocast context for forward passes."""
    if precision == "bf16":
        return partial(torch.autocast, device_type=device.type, dtype=torch.bfloat16)
    return nullcontext


def describe(precision: str) -> str:
    return {"bf16": "bf16 frozen weights + bf16 autocast, fp32 trainable weights", "fp32": "fp32"}[precision]

