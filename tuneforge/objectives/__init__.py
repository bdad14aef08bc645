"""Objectives are pure loss functions: loss(model, batch, ctx) -> LossOutput. A registry maps names.

A new objective is one module, its parameters in `params.py` and one line in `REGISTRY`; the engine's loop
is the same for all. Importing this package does not import PyTorch: the registry (whose modules do) is
built on first use, so a config's `objective:` keys are checked against `params.PARAMS` in a fraction of a
second.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from tuneforge.config import NamedParams, registry_lookup, validate_named_params
from tuneforge.objectives.params import PARAMS

if TYPE_CHECKING:
    from tuneforge.objectives.base import LossContext, LossOutput, Objective

__all__ = ["REGISTRY", "LossContext", "LossOutput", "Objective", "get_objective", "validate_objective_params"]


@cache
def registry() -> dict[str, Objective]:
    from tuneforge.objectives import classify, distill, preference, reward, rl, sft

    entries = {o.name: o for o in (sft.OBJECTIVE, *preference.OBJECTIVES, reward.OBJECTIVE, *rl.OBJECTIVES,
                                   *distill.OBJECTIVES, *classify.OBJECTIVES)}
    if {name: o.params for name, o in entries.items()} != PARAMS:
        raise RuntimeError("objectives.params.PARAMS and the registry disagree")  # caught by any test run
    for objective in entries.values():
        objective.kind  # noqa: B018  every objective names a registered data kind (caught by any test run)
    return entries


def __getattr__(name: str) -> Any:
    """`REGISTRY` and the shared types, loaded (with PyTorch) when first asked for."""
    if name == "REGISTRY":
        return registry()
    if name in ("LossContext", "LossOutput", "Objective"):
        from tuneforge.objectives import base

        return getattr(base, name)
    raise AttributeError(f"module 'tuneforge.objectives' has no attribute '{name}'")


def get_objective(name: str) -> Objective:
    return registry_lookup(registry(), name, "objective")


def validate_objective_params(spec: NamedParams, where: str = "config key 'objective'") -> BaseModel:
    """Validate the objective's own parameters (unknown keys fail with the closest valid name); needs no
    PyTorch."""
    return validate_named_params(registry_lookup(PARAMS, spec.name, "objective"), spec, "objective", where)
