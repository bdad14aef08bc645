"""Objectives are pure loss functions: loss(model, batch, ctx) -> LossOutput. A registry maps names.

A new objective is one module plus one line in `REGISTRY`; the engine's loop is the same for all.
"""

from __future__ import annotations

from tuneforge.config import closest_name
from tuneforge.errors import ConfigError
from tuneforge.objectives import sft
from tuneforge.objectives.base import LossContext, LossOutput, Objective

REGISTRY: dict[str, Objective] = {o.name: o for o in (sft.OBJECTIVE,)}

__all__ = ["REGISTRY", "LossContext", "LossOutput", "Objective", "get_objective"]


def get_objective(name: str) -> Objective:
    if name not in REGISTRY:
        hint = closest_name(name, list(REGISTRY))
        raise ConfigError(f"unknown objective '{name}' (config key 'objective.name')\n  fix: "
                          + (f"did you mean '{hint}'? " if hint else "")
                          + f"available: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]
