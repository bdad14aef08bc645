"""LoRA through peft (Hu et al., 2021, https://arxiv.org/abs/2106.09685): W + (alpha/r) B A, only A and B
trained, with the variants peft implements: DoRA, rsLoRA, PiSSA/OLoRA initialisation, and LoRA+."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tuneforge.errors import ConfigError
from tuneforge.methods.base import MethodParams, peft_task_type
from tuneforge.methods.peft_adapter import ADAPTER_DIR, peft_method

__all__ = ["ADAPTER_DIR", "DORA", "METHOD", "QLORA", "LoraParams"]


class LoraParams(MethodParams):
    r: int = Field(16, ge=1)
    alpha: float = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: str | list[str] = Field("all-linear", description="'all-linear' or module names")
    bias: str = Field("none", pattern="^(none|all|lora_only)$")
    dora: bool = Field(False, description="DoRA: learn each weight's magnitude and direction separately")
    rslora: bool = Field(False, description="rsLoRA: scale by alpha/sqrt(r) instead of alpha/r")
    init: Literal["default", "gaussian", "pissa", "olora"] = Field(
        "default", description="A/B initialisation; pissa starts from the principal singular vectors")
    loraplus_lr_ratio: float | None = Field(None, gt=0, description="LoRA+: B learns this many times faster than A")


class DoraParams(LoraParams):
    dora: bool = True


class QloraParams(LoraParams):
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type of the frozen base")
    double_quant: bool = Field(True, description="also quantize the quantization constants (saves ~0.4 bit/param)")


def quantized_base(params: QloraParams, compute_dtype) -> dict:
    """QLoRA (Dettmers et al., 2023, https://arxiv.org/abs/2305.14314): the frozen base in 4-bit NF4 with
    double quantization (bitsandbytes), computing in `compute_dtype`; LoRA on top in full precision."""
    from transformers import BitsAndBytesConfig

    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError("method 'qlora' needs bitsandbytes, which is not installed\n"
                          "  fix: pip install 'tuneforge[qlora]' (or bitsandbytes)") from None
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=params.quant_type,
                                bnb_4bit_use_double_quant=params.double_quant, bnb_4bit_compute_dtype=compute_dtype)
    return {"quantization_config": config}


def lora_config(params: LoraParams, model):
    from peft import LoraConfig

    init = {"default": True, "gaussian": "gaussian", "pissa": "pissa", "olora": "olora"}[params.init]
    return LoraConfig(r=params.r, lora_alpha=params.alpha, lora_dropout=params.dropout,
                      target_modules=params.target_modules, bias=params.bias, task_type=peft_task_type(model),
                      use_dora=params.dora, use_rslora=params.rslora, init_lora_weights=init)


def lr_scale(name: str, params: LoraParams) -> float:
    """LoRA+ (Hayou et al., 2024, https://arxiv.org/abs/2402.12354): B's learning rate is ratio times A's."""
    return params.loraplus_lr_ratio if params.loraplus_lr_ratio and ".lora_B." in name else 1.0


METHOD = peft_method("lora", "low-rank adapters on linear layers; options dora, rslora, init (pissa, olora), "
                     "loraplus_lr_ratio", LoraParams, lora_config, lr_scale=lr_scale, mergeable=True)
QLORA = peft_method("qlora", "LoRA on a 4-bit NF4 base with double quantization (bitsandbytes)", QloraParams,
                    lora_config, lr_scale=lr_scale, base_kwargs=quantized_base,
                    mergeable=True)
DORA = peft_method("dora", "LoRA with weight decomposition into magnitude and direction (Liu et al., 2024)",
                   DoraParams, lora_config, lr_scale=lr_scale, mergeable=True)
