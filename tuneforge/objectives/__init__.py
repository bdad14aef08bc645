"""Objectives are pure loss functions: loss(model, batch, ctx) -> LossOutput. A registry maps names.

A new objective is one module plus one line in `REGISTRY`; the engine's loop is the same for all.
"""

from __future__ import annotations

from pydantic import BaseModel

from tuneforge.config import NamedParams, registry_lookup, validate_named_params
from tuneforge.objectives import preference, reward, rl, sft
from tuneforge.objectives.base import LossContext, LossOutput, Objective

REGISTRY: dict[str, Objective] = {o.name: o for o in (sft.OBJECTIVE, *preference.OBJECTIVES, reward.OBJECTIVE,
                                                    *rl.OBJECTIVES)}

__all__ = ["REGISTRY", "LossContext", "LossOutput", "Objective", "get_objective", "validate_objective_params"]


def get_objective(name: str) -> Objective:
    return registry_lookup(REGISTRY, name, "objective")


def validate_objective_params(spec: NamedParams, where: str = "config key 'objective'") -> BaseModel:
    """Validate the objective's own parameters (unknown keys fail with the closest valid name)."""
    return validate_named_params(get_objective(spec.name).params, spec, "objective", where)
