"""The parameters of every objective, apart from the objectives themselves so that a config's
`objective:` keys are checked without importing PyTorch (a typo fails in a fraction of a second, before
anything loads). `PARAMS` maps each registered objective to its schema; the registry takes it from here."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class ObjectiveParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SmoothedParams(ObjectiveParams):
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="mix this much of a uniform distribution into "
                                   "each target (Szegedy et al., 2016); the held-out loss stays the plain "
                                   "cross-entropy")


class BetaParams(ObjectiveParams):
    beta: float = Field(0.1, gt=0, description="strength of the pull toward the reference (higher = stay closer)")


class CdpoParams(BetaParams):
    label_smoothing: float = Field(0.1, ge=0, lt=0.5, description="assumed probability that a label is flipped")


class SimpoParams(ObjectiveParams):
    beta: float = Field(2.0, gt=0, description="reward scale")
    gamma: float = Field(1.0, ge=0, description="target reward margin")


class KtoParams(BetaParams):
    desirable_weight: float = Field(1.0, gt=0, description="λ_D: weight of desirable examples (raise it when "
                                                            "they are the fewer)")
    undesirable_weight: float = Field(1.0, gt=0, description="λ_U: weight of undesirable examples")


class OrpoParams(ObjectiveParams):
    beta: float = Field(0.1, gt=0, description="weight λ of the odds-ratio term against the SFT term")


class RewardSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, description="a built-in (exact_match, number_match, number_only, "
                                               "length_penalty) or a dotted path to your function")
    model: str | None = Field(None, description="a finished run of objective: reward, whose score is the reward")
    weight: float = 1.0

    @model_validator(mode="after")
    def _one_source(self) -> RewardSpec:
        if (self.name is None) == (self.model is None):
            raise ValueError("give a reward function's `name` or a reward model run's `model`, not both")
        return self

    @property
    def label(self) -> str:
        return self.name or f"model:{self.model}"

    def __repr__(self) -> str:  # as `tuneforge methods` lists defaults
        return self.label if self.weight == 1.0 else f"{self.label}×{self.weight:g}"


class OnlineParams(ObjectiveParams):
    rewards: list[RewardSpec] = Field(default_factory=lambda: [RewardSpec(name="exact_match")],
                                      description="reward functions and reward models, each a name, {name, "
                                                  "weight} or {model: RUN_DIR, weight}; summed")
    group_size: int = Field(8, ge=2, description="completions sampled per prompt")
    temperature: float = Field(1.0, gt=0, description="sampling temperature of the rollouts")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling of the rollouts")
    max_new_tokens: int = Field(32, ge=1, description="the most tokens a completion may have")
    beta: float = Field(0.04, ge=0, description="weight of the KL penalty to the reference (0: no reference)")
    clip: float = Field(0.2, gt=0, description="PPO ratio clip ε")
    updates: int = Field(1, ge=1, description="optimizer steps on each rollout (PPO epochs); above 1 the "
                                              "ratio to the sampling policy moves and the clip acts")

    @field_validator("rewards", mode="before")
    @classmethod
    def _names(cls, value):
        items = value if isinstance(value, list) else [value]
        return [{"name": item} if isinstance(item, str) else item for item in items]


class GrpoParams(OnlineParams):
    scale_rewards: bool = Field(True, description="divide advantages by the group's reward std (false: Dr. GRPO)")


class PpoParams(OnlineParams):
    group_size: int = Field(4, ge=1, description="completions sampled per prompt")
    beta: float = Field(0.05, ge=0, description="per-token KL penalty to the reference, in the reward")
    updates: int = Field(2, ge=1, description="optimizer steps on each rollout (PPO epochs)")
    vf_coef: float = Field(0.1, ge=0, description="weight of the value loss")
    value_clip: float = Field(0.2, gt=0, description="how far a value may move from its rollout estimate")
    gamma: float = Field(1.0, ge=0, le=1, description="discount per token")
    lam: float = Field(0.95, ge=0, le=1, description="GAE λ")
    whiten: bool = Field(True, description="normalise the window's advantages to mean 0, std 1")


class KdParams(ObjectiveParams):
    teacher: str = Field(description="the teacher: a finished tuneforge run (its adapter applied), a model "
                                     "directory, 'default' or a hub id; it must share the student's vocabulary")
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the distillation term; 1 - alpha weighs the "
                                                      "SFT cross-entropy on the data's own answers")
    temperature: float = Field(1.0, gt=0, description="softens both distributions (the term is scaled by T², "
                                                      "Hinton et al.'s convention)")
    beta: float = Field(0.0, ge=0, le=1, description="0: forward KL(teacher ‖ student); 1: reverse KL; between: "
                                                     "the generalised Jensen-Shannon divergence of GKD")
    top_k: int | None = Field(None, ge=1, description="compare over the teacher's top-k tokens and the rest of "
                                                      "the vocabulary as one (what a cache of them holds); unset: "
                                                      "the whole vocabulary")
    top_k_by: Literal["top", "priority"] = Field(
        "top", description="with top_k: which k tokens each position keeps: 'top', the teacher's k most likely, with "
                           "the rest of the vocabulary pooled into one more entry; 'priority', k distinct tokens "
                           "priority-sampled from the teacher at the temperature, an unbiased estimate of its whole "
                           "distribution (the likely tokens kept exactly; forward KL, beta 0, only)")
    cache: bool = Field(True, description="with top_k: compute the teacher's top-k once per dataset and keep it on "
                                          "disk under $TUNEFORGE_HOME, keyed by teacher, data and settings; training "
                                          "then needs no teacher in memory")

    @model_validator(mode="after")
    def _samples_estimate_the_forward_kl(self) -> KdParams:
        if self.top_k_by == "priority" and not self.top_k:
            raise ValueError("top_k_by picks the top_k tokens: set top_k too (e.g. top_k: 32)")
        if self.top_k_by == "priority" and self.beta != 0:
            raise ValueError("priority-sampled tokens estimate the forward KL (beta 0) only: the reverse KL and "
                             "the JSD need the teacher's probability of tokens never sampled; set beta: 0, or "
                             "top_k_by: top")
        return self


class GkdParams(KdParams):
    alpha: float = Field(1.0, ge=0, le=1, description="weight of the distillation term (GKD: 1, no SFT term)")
    beta: float = Field(0.5, ge=0, le=1, description="0: forward KL; 1: reverse KL; between: generalised JSD")
    temperature: float = Field(0.9, gt=0, description="of the student's sampling and of both distributions in the "
                                                      "divergence (as TRL's GKDTrainer)")
    lam: float = Field(0.5, ge=0, le=1, description="λ: share of micro-batches trained on the student's own sampled "
                                                    "answers (on-policy); the rest on the data's answers")
    max_new_tokens: int = Field(64, ge=1, le=4096, description="the longest answer the student samples")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling of the student's answers")
    cache: bool = Field(False, description="off: the student's samples are new every step, so the teacher runs live")

    @model_validator(mode="after")
    def _live_teacher_on_policy(self) -> GkdParams:
        if self.cache and self.top_k and self.lam > 0:
            raise ValueError("a cached teacher knows only the data's answers, and on-policy steps train on the "
                             "student's own samples: set cache: false, or lam: 0")
        return self


class SeqkdParams(ObjectiveParams):
    teacher: str = Field(description="the teacher that answers the training prompts: a finished tuneforge run, a "
                                     "model directory, 'default' or a hub id")
    max_new_tokens: int = Field(64, ge=1, le=4096, description="the longest answer the teacher writes")
    temperature: float = Field(0.0, ge=0, description="0: the teacher's greedy answer (Kim & Rush's beam of one); "
                                                      "above: sampled")
    seed: int = Field(0, description="the sampling seed (temperature above 0)")


PARAMS: dict[str, type[ObjectiveParams]] = {
    "sft": SmoothedParams, "classify": SmoothedParams, "regress": ObjectiveParams,
    "dpo": BetaParams, "ipo": BetaParams, "cdpo": CdpoParams, "simpo": SimpoParams,
    "orpo": OrpoParams, "kto": KtoParams, "reward": ObjectiveParams, "grpo": GrpoParams, "rloo": OnlineParams,
    "ppo": PpoParams, "kd": KdParams, "seqkd": SeqkdParams, "gkd": GkdParams,
}
