"""`strategy: meta`, meta-learning through the one training loop: an outer step's window is a meta-batch of episodes
(`data.episodes`), one micro-batch per task, and the loss of an episode is a surrogate whose gradient is that task's
outer gradient (`metalearning.task_gradient`: Reptile, FOMAML or MAML) and whose value is the task's query loss
after adapting. The loop then does what it does for every objective — the outer optimizer's step (`train.optimizer`
at `train.lr`, its schedule and clipping), logging, held-out evaluation, checkpoints and resume — and, the episodes
being a function of the seed and the step, a resumed run trains the episodes the killed one would have.

The tasks are a family's meta-training tasks (`data.family`); its targets are never read. The run saves an
initialisation like any run's (the method's weights: an adapter `eval`, `chat` and `export` accept), and its held-out
evaluation is the meta-training tasks' own test sets (the targets are for `strategy: fewshot`)."""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from pathlib import Path

import torch

from tuneforge.config import LoadedConfig
from tuneforge.data.batching import count_label_tokens
from tuneforge.data.episodes import Episodes
from tuneforge.data.family import TaskFamily, family_for
from tuneforge.engine.console import RunConsole
from tuneforge.engine.session import Prepared, first_per_task
from tuneforge.errors import ConfigError
from tuneforge.models.load import load_tokenizer
from tuneforge.objectives import get_objective
from tuneforge.objectives.base import LossContext, LossOutput, Objective
from tuneforge.runs.recipe import Recipe
from tuneforge.runs.run import RunResult
from tuneforge.strategies.base import Strategy
from tuneforge.strategies.metalearning import functional_loss, task_gradient, trainable
from tuneforge.strategies.params import MetaParams
from tuneforge.strategies.phase import train_phase


def run(loaded: LoadedConfig, params: MetaParams, *, resume: bool = False, force: bool = False,
        quiet: bool = False) -> RunResult:
    record = {"name": "meta", **params.model_dump(mode="json")}
    return train_phase(loaded, RunConsole(quiet=quiet), resume=resume, force=force,
                       prepare=partial(prepare_episodes, params=params), record=record,
                       trained_as=lambda base: meta_objective(base, params.algorithm, params.inner_lr))


def check(loaded: LoadedConfig, params: MetaParams) -> TaskFamily:
    """Before anything loads: a family that reads, an objective on plain examples, as many meta-training tasks as a
    meta-batch draws, each with the records of one episode."""
    objective = get_objective(loaded.run.objective.name)
    if not objective.kind.episodic:
        raise ConfigError(f"{loaded.where('objective')}: strategy meta trains objectives on plain examples (sft, ...); "
                          f"'{objective.name}' trains on {objective.kind.name} records\n  fix: set objective: sft")
    family = family_for(loaded, params.family, params.split)
    if params.meta_batch > len(family.meta_train):
        raise ConfigError(f"{loaded.where('strategy', 'meta_batch')}: {params.meta_batch} tasks per outer step, but "
                          f"the family has {len(family.meta_train)} meta-training tasks\n  fix: set "
                          f"strategy.meta_batch to at most {len(family.meta_train)}")
    drawn = params.inner_steps * params.support + params.query
    small = [name for name in family.meta_train if family.tasks[name].size() < drawn]
    if small:
        raise ConfigError(f"{loaded.where('strategy')}: tasks {small} have fewer examples than one episode draws "
                          f"({drawn}: inner_steps x support + query)\n  fix: lower strategy.inner_steps, support or "
                          "query, or give those tasks more records")
    return family


def prepare_episodes(loaded: LoadedConfig, console: RunConsole | None, recipe: Recipe, *,
                     params: MetaParams) -> Prepared:
    """The family's meta-training tasks, read and tokenized as the recipe's objective reads plain examples: every
    training record of each task in its episodes, the first `eval.max_examples` of each task's test set held out."""
    cfg = loaded.run
    family = family_for(loaded, params.family, params.split)  # checked before anything loaded (`check`)
    train_raw = [e for name in family.meta_train for e in family.tasks[name].training()]
    test_raw = first_per_task([e for name in family.meta_train for e in family.tasks[name].tests()],
                              cfg.eval.max_examples or 10**9)
    tokenizer = load_tokenizer(cfg.model)
    encoded = recipe.objective.kind.encode(train_raw, test_raw, tokenizer, cfg.data, None, console)
    by_task: dict[str, list] = {name: [] for name in family.meta_train}
    for example in encoded.train:
        by_task[example.example.task].append(example)
    episodes = Episodes(by_task, params.meta_batch, params.inner_steps, params.support, params.query)
    small = episodes.too_small()
    if small:  # records dropped for length (data.overlong: drop)
        raise ConfigError(f"{loaded.where('data', 'max_seq_len')}: tasks {small} keep fewer examples "
                          "than one episode draws once the over-long ones are dropped\n  fix: raise data.max_seq_len, "
                          "or set data.overlong: truncate")
    return Prepared(episodes, encoded.test, test_raw, tokenizer, encoded.chat,
                    {**encoded.stats, "family": str(Path(family.root)), "meta_train": list(family.meta_train)})


def meta_objective(base: Objective, algorithm: str, inner_lr: float) -> Objective:
    """`base` (an objective on plain examples: sft) meta-learned with `algorithm` and inner SGD rate `inner_lr`; or,
    `multitask`, trained on the very same episodes' examples as plain multi-task learning (the control that counts:
    a multi-task start with the same examples and steps)."""
    if not base.kind.episodic:
        raise ValueError(f"meta-learning trains objectives on plain examples (sft); {base.name} trains on "
                         f"{base.kind.name} records")
    return Objective(f"{algorithm}:{base.name}", f"{base.summary}, meta-learned with {algorithm}",
                     partial(episode_loss, base=base, algorithm=algorithm, inner_lr=inner_lr), base.params,
                     data="episodes")


def episode_loss(model: torch.nn.Module, batch: dict, ctx: LossContext, *, base: Objective, algorithm: str,
                 inner_lr: float) -> LossOutput:
    """One task's share of the outer step: its outer gradient, divided by the meta-batch's size (the loop sums the
    episodes), carried by a surrogate whose value is the task's query loss after adapting."""
    def loss(m: torch.nn.Module, sub: dict) -> torch.Tensor:  # the base loss of one batch, normalised by its own
        sub_ctx = replace(ctx, num_label_tokens=count_label_tokens(sub), num_examples=int(sub["num_examples"]))
        return base.loss(m, sub, sub_ctx).loss

    if algorithm == "multitask":  # the control: the same examples and steps, trained as one plain step at θ
        batches = [*batch["support"], *batch["query"]]
        return LossOutput(sum(loss(model, sub) for sub in batches) / len(batches) / max(ctx.num_examples, 1))
    theta = trainable(model)
    gradient, losses = task_gradient(algorithm, functional_loss(model, loss), theta, batch["support"],
                                     batch["query"], inner_lr)
    tasks = max(ctx.num_examples, 1)
    carried = sum((p * gradient[name]).sum() for name, p in theta.items())
    surrogate = (carried - carried.detach() + losses["query_loss_after"]) / tasks
    return LossOutput(surrogate, {"query_loss_before": losses["query_loss_before"] / tasks,
                                  "query_loss_after": losses["query_loss_after"] / tasks})


STRATEGY = Strategy("meta", "meta-learning (Reptile, FOMAML, MAML) over a task family's meta-training tasks: an "
                    "initialisation for few-shot adaptation", MetaParams, run, needs_train_data=False, requires=check)
