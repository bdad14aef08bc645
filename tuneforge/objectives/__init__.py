"""Objectives are pure loss functions: loss(model, batch, ctx) -> LossOutput. A registry maps names.

A new objective is one module plus one line in `REGISTRY`; the engine's loop is the same for all.
"""

from __future__ import annotations

from tuneforge.config import registry_lookup
from tuneforge.objectives import sft
from tuneforge.objectives.base import LossContext, LossOutput, Objective

REGISTRY: dict[str, Objective] = {o.name: o for o in (sft.OBJECTIVE,)}

__all__ = ["REGISTRY", "LossContext", "LossOutput", "Objective", "get_objective"]


def get_objective(name: str) -> Objective:
    return registry_lookup(REGISTRY, name, "objective")
