"""Bottleneck adapters, our own implementation (no maintained library covers current transformers):
a small down-projection, a non-linearity and an up-projection added residually to a sub-layer's output,
the up-projection starting at zero so training starts from the unchanged model.

- Houlsby et al., 2019 (https://arxiv.org/abs/1902.00751): after the attention block and after the MLP.
- Pfeiffer et al., 2020 (https://arxiv.org/abs/2005.00247): after the MLP only.

The bottleneck width is hidden_size / reduction_factor. Only the adapters train; they are saved alone with
their settings, and switching them off gives back the base model (the reference for preference training).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager, contextmanager
from typing import Literal

from pydantic import Field

from tuneforge.errors import ConfigError
from tuneforge.methods.base import Method, MethodParams, run_subdir
from tuneforge.methods.selective import decoder_layers, load_tensors, save_trainable

ADAPTER_DIR = "bottleneck"


class AdapterParams(MethodParams):
    placement: Literal["houlsby", "pfeiffer"] = Field("pfeiffer", description="houlsby: after attention and MLP; "
                                                                             "pfeiffer: after the MLP")
    reduction_factor: int = Field(16, ge=1, description="bottleneck width = hidden size / reduction_factor")
    nonlinearity: Literal["relu", "gelu", "silu", "tanh"] = "relu"


def apply(model, params: AdapterParams):
    from tuneforge.models.parts import Bottleneck  # PyTorch only when a model is built: configs check fast

    for param in model.parameters():
        param.requires_grad_(False)
    hidden = model.config.hidden_size
    width = max(1, hidden // params.reduction_factor)
    for layer in decoder_layers(model):
        for site in adapter_sites(layer, params.placement):
            owner, _, name = site.rpartition(".")
            parent = layer.get_submodule(owner) if owner else layer
            inner = getattr(parent, name)
            wrapped = Bottleneck(inner, hidden, width, params.nonlinearity).to(next(inner.parameters()).device)
            setattr(parent, name, wrapped)
    model.tuneforge_bottleneck = params.model_dump()
    return model


def adapter_sites(layer, placement: str) -> tuple[str, ...]:
    """Where a layer's adapters go: on the output of the attention block and of the MLP, before the residual
    sum (Houlsby), or after the MLP only (Pfeiffer). Llama-style layers name them self_attn and mlp; BERT-style
    ones end each block in a projection followed by the residual and LayerNorm (attention.output.dense,
    output.dense)."""
    if hasattr(layer, "mlp"):
        attention, mlp = "self_attn", "mlp"
    elif hasattr(layer, "attention") and hasattr(layer, "output"):
        attention, mlp = "attention.output.dense", "output.dense"
    else:
        raise ConfigError(f"method 'adapter' does not know where to place adapters in {type(layer).__name__}\n  "
                          "fix: use lora or ia3 for this model")
    return (attention, mlp) if placement == "houlsby" else (mlp,)


def adapters(model) -> list:
    from tuneforge.models.parts import Bottleneck

    return [m for m in model.modules() if isinstance(m, Bottleneck)]


def save(model, run_dir) -> None:
    out = run_subdir(run_dir, ADAPTER_DIR)
    save_trainable(model, out)
    (out / "config.json").write_text(json.dumps(model.tuneforge_bottleneck, indent=1))


def load(run_dir, load_base):
    folder = run_subdir(run_dir, ADAPTER_DIR)
    model = apply(load_base(), AdapterParams(**json.loads((folder / "config.json").read_text())))
    load_tensors(model, folder)
    return model


def adapters_off_reference(model) -> Callable[[], AbstractContextManager]:
    @contextmanager
    def opened():
        for adapter in adapters(model):
            adapter.enabled = False
        try:
            yield model
        finally:
            for adapter in adapters(model):
                adapter.enabled = True

    return opened


METHOD = Method("adapter", "bottleneck adapters after attention and MLP (houlsby) or after the MLP (pfeiffer)",
                AdapterParams, apply, save, load, ADAPTER_DIR, reference=adapters_off_reference)
