"""Methods choose what is trained. Each module defines one `Method`; the registry maps names to them.

A new method is one module plus one line in `REGISTRY`.
"""

from __future__ import annotations

from pydantic import BaseModel

from tuneforge.config import NamedParams, registry_lookup, validate_named_params
from tuneforge.methods import bottleneck, full, ia3, lora, prompt, selective
from tuneforge.methods.base import Method, trainable_summary

REGISTRY: dict[str, Method] = {m.name: m for m in (
    lora.METHOD, lora.DORA, lora.QLORA, ia3.METHOD, prompt.PROMPT, prompt.PREFIX, prompt.PTUNING, bottleneck.METHOD,
    selective.BITFIT, selective.FREEZE, full.METHOD)}

__all__ = ["REGISTRY", "Method", "get_method", "trainable_summary", "validate_method_params"]


def get_method(name: str) -> Method:
    return registry_lookup(REGISTRY, name, "method")


def validate_method_params(spec: NamedParams, where: str = "config key 'method'") -> BaseModel:
    """Validate the method's own parameters (unknown keys fail with the closest valid name)."""
    return validate_named_params(get_method(spec.name).params, spec, "method", where)
