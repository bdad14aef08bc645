"""What a config can choose by name — methods, objectives, strategies and the strategies' own choices — each entry
with its summary and its parameters' schema. `tuneforge methods`, the config reference and the web UI's launch form
are all generated from here, so a new registry entry appears in each with no other change."""

from __future__ import annotations

from dataclasses import dataclass, field

TITLES = {"method": "methods (method: NAME)", "objective": "objectives (objective: NAME)",
          "strategy": "strategies (strategy: NAME)",
          "strategy.mitigation": "continual-learning mitigations (strategy.mitigation: NAME)",
          "strategy.aggregation": "federated aggregations (strategy.aggregation: NAME)"}


@dataclass(frozen=True)
class Entry:
    """A registered method, objective, strategy, mitigation or aggregation: its summary and its parameters with
    their defaults."""

    name: str
    summary: str
    params: dict[str, str]
    relative_lr: float | None = None
    schema: type | None = field(default=None, repr=False)  # its parameters' pydantic model

    def lines(self) -> list[str]:
        """As `tuneforge methods` lists it."""
        relative = f" (compare's lr scale {self.relative_lr:g})" if self.relative_lr else ""
        shown = [f"  {self.name:<9} {self.summary}{relative}"]
        return shown + ([f"  {'':<9} " + ", ".join(f"{k}={v}" for k, v in self.params.items())] if self.params else [])


def catalogue() -> dict[str, list[Entry]]:
    """What can be chosen, by the config key that chooses it (`method`, `objective`, ... as TITLES names them)."""
    from tuneforge.methods import REGISTRY as METHODS
    from tuneforge.objectives import REGISTRY as OBJECTIVES
    from tuneforge.strategies import registry as strategies
    from tuneforge.strategies.params import AGGREGATION_PARAMS, MITIGATION_PARAMS

    def entry(name: str, summary: str, schema, relative_lr: float | None = None) -> Entry:
        return Entry(name, summary, {key: default_of(value) for key, value in schema.model_fields.items()},
                     relative_lr, schema)

    def described(schemas: dict) -> list[Entry]:
        return [entry(name, (schema.__doc__ or name).strip().split("\n")[0], schema)
                for name, schema in schemas.items()]

    return {"method": [entry(n, m.summary, m.params, m.relative_lr) for n, m in METHODS.items()],
            "objective": [entry(n, o.summary, o.params) for n, o in OBJECTIVES.items()],
            "strategy": [entry(n, s.summary, s.params) for n, s in strategies().items()],
            "strategy.mitigation": described(MITIGATION_PARAMS),
            "strategy.aggregation": described(AGGREGATION_PARAMS)}


def default_of(spec, quote: str = "") -> str:
    """A field's default as YAML spells it (`quote` around it), or required."""
    if spec.is_required():
        return "required"
    value = spec.get_default(call_default_factory=True)
    if hasattr(value, "name") and hasattr(value, "params"):  # a nested registry choice (a mitigation)
        value = value.name
    if isinstance(value, list) and value and all(hasattr(v, "model_dump") for v in value):  # sections, as YAML
        value = "[" + ", ".join("{" + ", ".join(f"{k}: {v}" for k, v in item.model_dump().items()) + "}"
                                for item in value) + "]"
    shown = {True: "true", False: "false", None: "none"}.get(value, value) if isinstance(value, bool | None) else value
    return f"{quote}{'[]' if shown == [] else shown}{quote}"


