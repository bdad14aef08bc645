"""Selective fine-tuning, our own (no maintained library covers it): train a chosen subset of the model's
own parameters and save only those.

- `freeze`: train the parameters whose names match regular expressions and/or the last k decoder layers;
  everything else stays frozen.
- `bitfit` (Ben Zaken et al., 2021, https://arxiv.org/abs/2106.10199): train only bias terms. Llama-style
  models have none, so a zero bias is added to every linear layer of the decoder first; the model is
  unchanged until they train, and they merge by simply being kept.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field

from tuneforge.errors import ConfigError
from tuneforge.methods.base import Method, MethodParams, run_subdir, unchanged

if TYPE_CHECKING:
    import torch

TRAINED_DIR = "trained"
TENSORS = "trained.safetensors"


class FreezeParams(MethodParams):
    patterns: list[str] = Field(default_factory=list, description="regular expressions on parameter names to train, "
                                                                  "e.g. ['mlp', 'norm']")
    last_layers: int | None = Field(None, ge=1, description="also train every parameter of the last k decoder layers")


class BitfitParams(MethodParams):
    pass


def decoder_layers(model) -> torch.nn.ModuleList:
    """The model's stack of transformer layers: Llama, Mistral, Qwen, Gemma, Phi-3 keep it at model.model.layers,
    BERT-style encoders at <body>.encoder.layer, GPT-2 at transformer.h; found as the module list whose length
    is the config's layer count."""
    import torch  # PyTorch only when a model is built: configs check without it

    layers = getattr(getattr(model, "model", None), "layers", None)
    if isinstance(layers, torch.nn.ModuleList):
        return layers
    count = getattr(model.config, "num_hidden_layers", None)
    found = next((m for _, m in model.named_modules() if isinstance(m, torch.nn.ModuleList) and len(m) == count), None)
    if found is None:
        raise ConfigError(f"cannot find the transformer layers of {type(model).__name__} (a list of "
                          f"{count} layers)\n  fix: use method.patterns instead of last_layers, or another method")
    return found


def apply_freeze(model, params: FreezeParams):
    if not params.patterns and not params.last_layers:
        raise ConfigError("method 'freeze' trains nothing: give method.patterns and/or method.last_layers\n"
                          "  fix: e.g. method: {name: freeze, last_layers: 2}")
    chosen = [re.compile(p) for p in params.patterns]
    layers = decoder_layers(model) if params.last_layers else []
    in_last = {id(p) for layer in list(layers)[-params.last_layers:] for p in layer.parameters()} \
        if params.last_layers else set()
    for name, param in model.named_parameters():
        param.requires_grad_(id(param) in in_last or any(p.search(name) for p in chosen))
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(f"method.patterns {params.patterns} match no parameter name\n  fix: check the names, "
                          "e.g. 'layers\\.29\\.', 'mlp', 'norm', 'embed_tokens'")
    return model


def apply_bitfit(model, params: BitfitParams):
    """Every bias of the transformer layers trains: the linear layers' (added where missing) and the norms'
    (BERT's LayerNorm has one; RMSNorm has none)."""
    import torch  # PyTorch only when a model is built: configs check without it

    for param in model.parameters():
        param.requires_grad_(False)
    for layer in decoder_layers(model):
        for module in layer.modules():
            if isinstance(module, torch.nn.Linear) and module.bias is None:
                module.bias = torch.nn.Parameter(torch.zeros(module.out_features, dtype=module.weight.dtype,
                                                             device=module.weight.device))
            bias = getattr(module, "bias", None)
            if isinstance(bias, torch.nn.Parameter):
                bias.requires_grad_(True)
    return model


def save(model, run_dir) -> None:
    save_trainable(model, run_subdir(run_dir, TRAINED_DIR))


def save_trainable(model, out: Path) -> None:
    """Only the trained tensors, plus their names and shapes: a small file however large the base."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    trained = {n: p.detach().to("cpu").contiguous() for n, p in model.named_parameters() if p.requires_grad}
    save_file(trained, str(out / TENSORS))
    (out / "names.json").write_text(json.dumps({n: list(t.shape) for n, t in trained.items()}, indent=1))


def load(run_dir, load_base):
    """The base with the trained tensors put back; a bias the base lacks (bitfit) is added."""
    model = load_base()
    load_tensors(model, run_subdir(run_dir, TRAINED_DIR))
    return model


def load_tensors(model, folder: Path) -> None:
    """Put saved tensors into the model by name, creating a parameter the model lacks (a bitfit bias)."""
    import torch  # PyTorch only when a model is built: configs check without it
    from safetensors.torch import load_file

    modules = dict(model.named_modules())
    for name, tensor in load_file(str(folder / TENSORS)).items():
        owner, _, attribute = name.rpartition(".")
        module = modules[owner]
        current = getattr(module, attribute, None)
        if current is None:
            setattr(module, attribute, torch.nn.Parameter(tensor.to(module.weight.dtype)))
        else:
            with torch.no_grad():
                current.copy_(tensor)
            current.requires_grad_(True)  # a trained tensor: it keeps the dtype it trained in


def bitfit_merged(model):
    """A bitfit model is a plain model with biases; its config must say so for transformers to load them (a model
    with biases everywhere already, such as BERT, needs nothing)."""
    import torch

    with torch.device("meta"):
        fresh = type(model)(model.config)
    if set(model.state_dict()) <= set(fresh.state_dict()):
        return model
    flags = [flag for flag in ("attention_bias", "mlp_bias") if hasattr(model.config, flag)]
    if len(flags) < 2:
        raise ConfigError(f"cannot export a bitfit model of type {model.config.model_type}: its config has no "
                          "attention_bias and mlp_bias switches, so transformers would drop the trained biases\n"
                          "  fix: use the run directory with tuneforge, or a Llama-family model")
    for flag in flags:
        setattr(model.config, flag, True)
    return model


FREEZE = Method("freeze", "train only parameters matching patterns and/or the last k layers", FreezeParams,
                apply_freeze, save, load, TRAINED_DIR, merge=unchanged, relative_lr=0.05)
BITFIT = Method("bitfit", "train only bias terms (zero biases added where the model has none)", BitfitParams,
                apply_bitfit, save, load, TRAINED_DIR, merge=bitfit_merged, relative_lr=5.0)
