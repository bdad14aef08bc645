"""Each strategy's parameters (the `strategy:` section of a config), checked before anything loads. `PARAMS`
maps each registered strategy to its schema; the registry takes it from here."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tuneforge.config import NamedParams, registry_lookup, validate_named_params


class StrategyParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    def check(self, where: str) -> None:
        """Validate what the schema alone cannot (nested registry choices); before PyTorch loads."""


class SingleParams(StrategyParams):
    """One phase, one run directory: `tuneforge train` as it always was. No parameters."""


class MitigationParams(StrategyParams):
    pass


class NoMitigationParams(MitigationParams):
    """the naive baseline: each task trained on its own data, nothing held back"""


class ReplayParams(MitigationParams):
    """a seeded reservoir of earlier tasks' examples mixed into each later task"""

    size: int = Field(400, ge=1, le=1_000_000, description="examples kept from the earlier tasks (a seeded "
                      "reservoir over all of them)")
    fraction: float = Field(1.0, gt=0, le=10, description="replayed examples per example of the task trained "
                            "(in addition: with train.max_steps the task's steps grow to match)")


class EwcParams(MitigationParams):
    """elastic weight consolidation: a diagonal-Fisher pull toward the earlier tasks' weights"""

    strength: float = Field(1.0, ge=0, description="λ of λ/2·Σ F (θ - θ*)²")
    examples: int = Field(64, ge=1, le=100_000, description="examples of each task the Fisher is estimated on")
    normalize: bool = Field(True, description="scale each task's Fisher to mean 1 (λ independent of the loss "
                            "scale)")
    decay: float = Field(1.0, ge=0, le=1, description="online EWC: the earlier tasks' Fisher is multiplied by "
                         "this before the new task's is added")


class L2spParams(MitigationParams):
    """L2-SP: an L2 pull toward the weights each task started from"""

    strength: float = Field(1.0, ge=0, description="α of α/2·Σ (θ - θ₀)², θ₀ the weights the task started from")


class LwfParams(MitigationParams):
    """learning without forgetting: the earlier model's outputs on the new data, distilled"""

    strength: float = Field(1.0, ge=0, description="weight of the distillation term")
    temperature: float = Field(2.0, gt=0, le=100)
    examples: int = Field(64, ge=1, le=100_000, description="new-task examples the earlier model answers")
    batch_size: int = Field(4, ge=1, le=1024, description="examples distilled per optimizer step")
    top_k: int = Field(16, ge=1, le=1024, description="log-probabilities kept per position")


class OloraParams(MitigationParams):
    """O-LoRA: a new LoRA per task, orthogonal to the earlier tasks' LoRA subspaces"""

    strength: float = Field(0.5, ge=0, description="λ of λ·Σ ‖A_old A_newᵀ‖²")


MITIGATION_PARAMS: dict[str, type[MitigationParams]] = {
    "none": NoMitigationParams, "replay": ReplayParams, "ewc": EwcParams, "l2sp": L2spParams, "lwf": LwfParams,
    "olora": OloraParams}


class SequentialParams(StrategyParams):
    """Continual learning: the tasks of `data.train` (each entry names its `task`) trained one after another
    on one model, in the order they first appear; after each, every task's test set is scored."""

    mitigation: NamedParams = Field(default_factory=lambda: NamedParams(name="none"),
                                    description="none | replay | ewc | l2sp | lwf | olora, with its parameters")
    metric: str = Field("exact_match", description="the score of the accuracy matrix (one of eval.metrics)")

    @model_validator(mode="before")
    @classmethod
    def _named(cls, data):
        if isinstance(data, dict) and isinstance(data.get("mitigation"), str):
            data = {**data, "mitigation": {"name": data["mitigation"]}}
        return data

    def mitigation_params(self, where: str = "config key 'strategy'") -> MitigationParams:
        schema = registry_lookup(MITIGATION_PARAMS, self.mitigation.name, "strategy.mitigation")
        return validate_named_params(schema, self.mitigation, "strategy.mitigation", where)

    def check(self, where: str) -> None:
        self.mitigation_params(where)


class MultitaskParams(StrategyParams):
    """Several tasks at once (each data.train entry names its task)."""

    adapters: Literal["shared", "per_task"] = Field(
        "shared", description="one adapter on the mixture, or one adapter per task on one base")


PARAMS: dict[str, type[StrategyParams]] = {"single": SingleParams, "sequential": SequentialParams,
                                           "multitask": MultitaskParams}
