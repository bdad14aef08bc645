"""Each strategy's parameters (the `strategy:` section of a config), checked before anything loads. `PARAMS`
maps each registered strategy to its schema; the registry takes it from here."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tuneforge.config import NamedParams, registry_lookup, validate_named_params


class StrategyParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    def check(self, where: str) -> None:
        """Validate what the schema alone cannot (nested registry choices); before PyTorch loads."""

    def phases_by_task(self) -> str | None:
        """Why every data.train entry must name a task, where the strategy's phases are the data's tasks."""
        return None


class ChoiceParams(StrategyParams):
    """A strategy with one nested registry choice, `KEY: NAME` or `KEY: {name: NAME, ...}` (a continual
    strategy's mitigation, a federated one's aggregation), checked against its registry's schema."""

    choice_key: ClassVar[str]
    choices: ClassVar[dict[str, type[StrategyParams]]]

    @model_validator(mode="before")
    @classmethod
    def _named(cls, data):
        if isinstance(data, dict) and isinstance(data.get(cls.choice_key), str):
            data = {**data, cls.choice_key: {"name": data[cls.choice_key]}}
        return data

    def chosen(self, where: str = "config key 'strategy'") -> StrategyParams:
        """The choice's own parameters, validated (unknown keys name the nearest valid one)."""
        spec, key = getattr(self, self.choice_key), f"strategy.{self.choice_key}"
        return validate_named_params(registry_lookup(self.choices, spec.name, key), spec, key, where)

    def check(self, where: str) -> None:
        self.chosen(where)


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


class SequentialParams(ChoiceParams):
    """Continual learning: the tasks of `data.train` (each entry names its `task`) trained one after another
    on one model, in the order they first appear; after each, every task's test set is scored."""

    mitigation: NamedParams = Field(default_factory=lambda: NamedParams(name="none"),
                                    description="none | replay | ewc | l2sp | lwf | olora, with its parameters")
    metric: str = Field("exact_match", description="the score of the accuracy matrix (one of eval.metrics)")

    choice_key: ClassVar[str] = "mitigation"

    def phases_by_task(self) -> str | None:
        return "strategy: sequential trains the tasks one after another"
    choices: ClassVar[dict] = MITIGATION_PARAMS


class MultitaskParams(StrategyParams):
    """Several tasks at once (each data.train entry names its task)."""

    adapters: Literal["shared", "per_task"] = Field(
        "shared", description="one adapter on the mixture, or one adapter per task on one base")

    def phases_by_task(self) -> str | None:
        return "adapters: per_task trains one adapter per task" if self.adapters == "per_task" else None


class AggregationParams(StrategyParams):
    pass


class FedAvgParams(AggregationParams):
    """FedAvg: the clients' trained weights averaged, weighted by their examples"""


class FedProxParams(AggregationParams):
    """FedProx: FedAvg, each client's loss with a proximal pull toward the round's global weights"""

    mu: float = Field(0.01, ge=0, description="μ of μ/2·‖w − w_global‖², added to each client's loss")


class FedAvgMParams(AggregationParams):
    """FedAvgM: the averaged client update applied by the server with its own learning rate and momentum"""

    server_lr: float = Field(1.0, gt=0, le=100, description="the averaged update (global minus the clients' mean) "
                             "times this; above 1 lets each round travel further than one client's local steps")
    momentum: float = Field(0.0, ge=0, lt=1, description="the server's heavy-ball momentum over the rounds' updates")


class FedOptParams(AggregationParams):
    eta: float = Field(0.01, gt=0, description="the server's learning rate on the averaged update")
    beta_1: float = Field(0.9, ge=0, lt=1)
    beta_2: float = Field(0.99, ge=0, lt=1)
    tau: float = Field(1e-3, gt=0, description="the adaptivity floor (ε of Adam)")


class FedAdamParams(FedOptParams):
    """FedAdam: the averaged client update fed to a server-side Adam"""


class FedYogiParams(FedOptParams):
    """FedYogi: the averaged client update fed to a server-side Yogi (Adam with a sign-controlled second moment)"""


AGGREGATION_PARAMS: dict[str, type[AggregationParams]] = {
    "fedavg": FedAvgParams, "fedavgm": FedAvgMParams, "fedprox": FedProxParams, "fedadam": FedAdamParams,
    "fedyogi": FedYogiParams}


class PrivacyParams(StrategyParams):
    """Differential privacy of the clients' updates (Flower's server-side fixed clipping)."""

    clipping_norm: float = Field(gt=0, le=1e6, description="each client's update (its weights minus the round's "
                                 "global weights) clipped to this L2 norm")
    noise_multiplier: float = Field(0.0, ge=0, le=1000, description="Gaussian noise of σ = noise_multiplier × "
                                    "clipping_norm added to the sum of the clipped updates; > 0 for an (ε, δ)")
    delta: float = Field(1e-5, gt=0, lt=1, description="the δ at which ε is reported each round")


class FederatedParams(ChoiceParams):
    """Federated fine-tuning on Flower: clients train the adapter on their own data for `local_steps` a round;
    the server aggregates only the trainable weights, never sees the data."""

    clients: int = Field(10, ge=1, le=10_000, description="clients data.train is split among (ignored with "
                         "client_data)")
    client_data: list[str] = Field(default_factory=list, description="one data file per client, instead of a "
                                   "split of data.train")
    split: Literal["iid", "dirichlet"] = Field("dirichlet", description="how data.train is split: evenly at "
                                               "random, or by a Dirichlet(alpha) over each record's task")
    alpha: float = Field(0.5, gt=0, le=1000, description="Dirichlet concentration: small is very non-IID")
    min_client_examples: int = Field(5, ge=1, description="the Dirichlet split is drawn again until every "
                                     "client has this many")
    rounds: int = Field(5, ge=1, le=100_000)
    local_steps: int = Field(2, ge=1, le=1_000_000, description="optimizer steps each client takes per round")
    fraction: float = Field(1.0, gt=0, le=1, description="share of the connected clients sampled each round")
    sampling: Literal["uniform", "examples"] = Field("uniform", description="how a round's clients are drawn: "
                                                     "each as likely (Flower's sampler), or in proportion to its "
                                                     "training examples (FedAvg's unbiased scheme: the updates are "
                                                     "then averaged with equal weights)")
    min_clients: int | None = Field(None, ge=1, le=10_000, description="a round starts once this many clients are "
                                    "connected (default: all of them); fewer lets a federation go on after a "
                                    "client is lost")
    holdout: float = Field(0.2, ge=0, lt=1, description="share of each client's data it keeps to score the "
                           "global model on")
    client_eval_every: int = Field(1, ge=1, description="the clients score the global model on their held-out data "
                                   "every this many rounds (and after the last); the server scores data.test every "
                                   "round")
    aggregation: NamedParams = Field(default_factory=lambda: NamedParams(name="fedavg"),
                                     description="fedavg | fedavgm | fedprox | fedadam | fedyogi, with its "
                                     "parameters")
    privacy: PrivacyParams | None = Field(None, description="clipping and noise of the clients' updates, with "
                                          "the (ε, δ) spent reported per round; unset: none")

    choice_key: ClassVar[str] = "aggregation"
    choices: ClassVar[dict] = AGGREGATION_PARAMS


class MetaParams(StrategyParams):
    """Meta-learning: an initialisation learned over a task family's meta-training tasks (its targets never seen),
    an outer step being `meta_batch` episodes; the outer optimizer is train.optimizer at train.lr, `train.max_steps`
    outer steps."""

    algorithm: Literal["reptile", "fomaml", "maml", "multitask"] = Field(
        "reptile", description="reptile: toward the adapted weights; fomaml: the query gradient at them; maml: "
        "through the inner steps (second order); multitask: the control, the same episodes' examples trained as "
        "plain multi-task steps")
    family: str = Field("textops", description="a bundled family (textops) or a folder of task folders")
    split: str | None = Field(None, description="MetaICL's split file ({train: [...], test: [...]}) where the "
                              "family folder has no family.json")
    meta_batch: int = Field(4, ge=1, le=1024, description="tasks per outer step")
    inner_steps: int = Field(4, ge=1, le=1000, description="SGD steps on a task's support set per episode")
    support: int = Field(4, ge=1, le=4096, description="examples per support batch")
    query: int = Field(8, ge=1, le=4096, description="examples in an episode's query batch")
    inner_lr: float = Field(0.1, gt=0, le=10, description="the inner loop's SGD rate (plain SGD on a LoRA "
                            "adapter needs ~100x Adam's rate to move: at 1e-3 four steps left a task's query loss "
                            "unchanged, at 0.1 they cut it by a third)")


class FewshotParams(StrategyParams):
    """Few-shot curves on a task family's targets: each start adapted on k examples per seed, scored on each
    target's test set, beside in-context learning (k = 0: zero-shot)."""

    family: str = Field("textops", description="a bundled family (textops) or a folder of task folders")
    split: str | None = Field(None, description="MetaICL's split file where the family folder has no family.json")
    starts: dict[str, str | None] = Field(default_factory=lambda: {"base": None}, description="name: run "
                                          "directory whose trained weights start each adaptation (null: the config's "
                                          "model with its method freshly applied)")
    k: list[int] = Field(default_factory=lambda: [0, 4, 16, 64], min_length=1, description="examples to adapt "
                         "on (and to show in context)")
    seeds: int = Field(5, ge=1, le=1000, description="draws of the k examples per k > 0")
    steps: int = Field(20, ge=1, le=100_000, description="optimizer steps of each adaptation")
    in_context: bool = Field(True, description="also score the config's model with the k examples in the prompt")
    max_test: int = Field(50, ge=1, description="test questions per target task")


PARAMS: dict[str, type[StrategyParams]] = {"single": SingleParams, "sequential": SequentialParams,
                                           "multitask": MultitaskParams, "federated": FederatedParams,
                                           "meta": MetaParams, "fewshot": FewshotParams}
