"""AdamW with decoupled weight decay (none on biases and norms) and learning-rate schedules."""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import torch

from tuneforge.config import TrainConfig


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig,
                    lr_scale: Callable[[str], float] | None = None) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, grouped by weight decay and by the method's learning-rate
    multiplier (`lr_scale(name)`, e.g. LoRA+); each group keeps its multiplier as `lr_scale`."""
    groups: dict[tuple[bool, float], list] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            decays = not (param.ndim < 2 or "norm" in name.lower())
            groups.setdefault((decays, lr_scale(name) if lr_scale else 1.0), []).append(param)
    param_groups = [{"params": params, "weight_decay": cfg.weight_decay if decays else 0.0, "lr_scale": scale}
                    for (decays, scale), params in sorted(groups.items(), key=lambda kv: (not kv[0][0], kv[0][1]))]
    return torch.optim.AdamW(param_groups, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps,
                             foreach=True)


LAYER_INDEX = re.compile(r"\.(?:layer|layers|h|block|blocks)\.(\d+)\.")


def layer_lr_decay(model: torch.nn.Module, decay: float) -> Callable[[str], float]:
    """Layer-wise learning-rate decay (Howard & Ruder, 2018; Clark et al., 2020, ELECTRA): the head and the top
    layer train at the full rate, layer i of L at decay^(L - i), the embeddings at decay^(L + 1) (parameters
    in no numbered layer and not an embedding, such as the head, pooler and final norm, count as the top)."""
    layers = int(getattr(model.config, "num_hidden_layers", 0) or 0)

    def scale(name: str) -> float:
        found = LAYER_INDEX.search(name)
        if found:
            return decay ** (layers - 1 - int(found.group(1)))
        return decay ** layers if "embed" in name or ".wte." in name or ".wpe." in name else 1.0

    return scale


def warmup_steps(cfg: TrainConfig, total_steps: int) -> int:
    return cfg.warmup_steps or math.ceil(cfg.warmup_ratio * total_steps)


def lr_at(step: int, total_steps: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warmup, then the chosen decay."""
    if cfg.schedule == "range_test":  # the LR range test: lr_start to lr, exponentially, no warmup
        return cfg.lr_start * (cfg.lr / cfg.lr_start) ** (step / max(1, total_steps - 1))
    warm = warmup_steps(cfg, total_steps)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    if cfg.schedule in ("constant", "plateau"):  # a plateau's reductions are the loop's (`LoopState`)
        return cfg.lr
    progress = (step - warm) / max(1, total_steps - warm)
    if cfg.schedule == "linear":
        return cfg.lr * max(0.0, 1.0 - progress)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
