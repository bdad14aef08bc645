"""Methods choose what is trained. Each module defines one `Method`; the registry maps names to them.

A new method is one module plus one line in `REGISTRY`.
"""

from __future__ import annotations

from pydantic import BaseModel, ValidationError

from tuneforge.config import NamedParams, closest_name, registry_lookup
from tuneforge.errors import ConfigError
from tuneforge.methods import full, lora
from tuneforge.methods.base import Method, trainable_summary

REGISTRY: dict[str, Method] = {m.name: m for m in (lora.METHOD, full.METHOD)}

__all__ = ["REGISTRY", "Method", "get_method", "trainable_summary", "validate_method_params"]


def get_method(name: str) -> Method:
    return registry_lookup(REGISTRY, name, "method")


def validate_method_params(spec: NamedParams, where: str = "config key 'method'") -> BaseModel:
    """Validate the method's own parameters (unknown keys fail with the closest valid name)."""
    method = get_method(spec.name)
    try:
        return method.params.model_validate(spec.params())
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                hint = closest_name(key, list(method.params.model_fields))
                fix = f"did you mean 'method.{hint}'?" if hint else \
                    f"valid keys for {spec.name}: {', '.join(method.params.model_fields)}"
                lines.append(f"{where}: unknown key 'method.{key}' for method '{spec.name}'\n  fix: {fix}")
            else:
                lines.append(f"{where}: 'method.{key}' = {err.get('input')!r}: {err['msg']}\n"
                             f"  fix: give a valid value for 'method.{key}'")
        raise ConfigError("\n".join(lines)) from None
