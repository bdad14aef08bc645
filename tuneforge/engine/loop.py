"""The one training loop: token-normalised gradient accumulation, precision, clipping, the optimizer and
schedule, logging, periodic evaluation with early stopping, and checkpoints. Objectives are plain loss
functions handed in; nothing here knows which objective or method is being trained."""

from __future__ import annotations

import math
import resource
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch

from tuneforge.config import LOWER_IS_BETTER, TrainConfig
from tuneforge.data.batching import count_label_tokens, to_device
from tuneforge.data.dataset import TrainExample
from tuneforge.data.stream import StreamedExamples, step_plan
from tuneforge.engine import checkpoint, distributed
from tuneforge.engine.console import Metrics, RunConsole, flat_scores
from tuneforge.engine.optim import build_optimizer, lr_at, set_lr
from tuneforge.engine.resources import resource_guard
from tuneforge.errors import TrainingError
from tuneforge.objectives import LossContext, Objective
from tuneforge.objectives.base import Frozen, ObjectiveParams


@dataclass
class LoopState:
    step: int = 0
    best_eval_loss: float | None = None
    evals_without_improvement: int = 0
    stopped_early: bool = False
    skipped_steps: int = 0
    fingerprint: dict = field(default_factory=dict)
    lr_reductions: int = 0  # train.schedule: plateau: how often the rate has been cut so far
    data_position: dict | None = None  # where a streamed dataset is read to (None: the step says it)

    def as_json(self) -> dict:
        return {"best_eval_loss": self.best_eval_loss, "evals_without_improvement": self.evals_without_improvement,
                "skipped_steps": self.skipped_steps, "fingerprint": self.fingerprint,
                "lr_reductions": self.lr_reductions, "data_position": self.data_position}


@dataclass
class LoopInputs:
    model: torch.nn.Module
    objective: Objective
    examples: Sequence[TrainExample] | StreamedExamples  # in memory, or read as training goes (data.streaming)
    cfg: TrainConfig
    pad_id: int
    device: torch.device
    autocast: Callable
    metrics: Metrics
    console: RunConsole
    checkpoint_dir: Path
    evaluate: Callable[[], dict[str, float]] | None = None  # held-out loss, for eval_every/early stopping
    objective_params: ObjectiveParams = field(default_factory=ObjectiveParams)
    frozen: Frozen = field(default_factory=Frozen)  # the reference and the teacher, for objectives using them
    lr_scale: Callable[[str], float] | None = None  # per-parameter learning-rate multiplier from the method
    # online objectives: the window's prompts -> sampled sequences, their advantages, rollout figures
    rollout: Callable | None = None
    updates: int = 1  # optimizer steps per rollout (PPO epochs)
    # a strategy's regularisation term on top of any objective's loss (EWC, L2-SP, FedProx): a function of the
    # model, added once per optimizer step, the objective untouched
    penalty: Callable[[torch.nn.Module], torch.Tensor] | None = None


def train_loop(inputs: LoopInputs, state: LoopState, resume_from: Path | None = None) -> LoopState:
    """Train from `state` (or the checkpoint `resume_from`) to the plan's last step. In a torch.distributed
    world every process runs this loop on its share of each step (see `engine.distributed`); only the main
    one logs and writes checkpoints."""
    cfg, model, world = inputs.cfg, inputs.model, distributed.world()
    plan = step_plan(inputs.examples, cfg)
    total = plan.total_steps(cfg.epochs, cfg.max_steps)
    with distributed.peers_guard(lambda: "at the start", cfg.collective_timeout_s):
        # before the optimizer: FSDP replaces the parameters with their shards
        forward_model = world.data_parallel(model)
    optimizer = build_optimizer(model, cfg, inputs.lr_scale)
    if resume_from is not None:
        saved = checkpoint.load_checkpoint(resume_from, model, optimizer)
        state = _restored_state(saved, state.fingerprint)
        inputs.console.info(f"resumed from {resume_from.name} at step {state.step}/{total}")
    plan.restore(state.step, state.data_position)
    model.train()
    inputs.console.start_training(total, state.step)
    started, tokens_seen, first_step = time.perf_counter(), 0, state.step

    def guard(doing: str) -> AbstractContextManager:
        return resource_guard(doing, inputs.checkpoint_dir, cfg)

    try:
        with distributed.peers_guard(lambda: f"at step {state.step + 1}", cfg.collective_timeout_s):
            for step in range(state.step, total):
                step_started, window = time.perf_counter(), plan.window(step)
                with guard(f"in training step {step + 1}"):
                    lr = lr_at(step, total, cfg) * cfg.plateau_factor ** state.lr_reductions
                    values = train_step(inputs, optimizer, window, lr, step, forward_model)
                values["step_time_s"] = time.perf_counter() - step_started
                values["peak_memory_gib"] = peak_memory_gib(inputs.device)
                state.step = step + 1
                tokens_seen += values["tokens"]
                values["epoch"] = plan.epoch_of(step)
                # the records this step trained on, in order: a resumed run's steps can be checked against these
                values["samples"] = [e.sample_id for micro in window for e in micro]
                tasks = Counter(e.example.task for micro in window for e in micro)
                if None not in tasks:  # a mixture of named tasks: how many examples of each this step saw
                    values["tasks"] = dict(sorted(tasks.items()))
                if values.pop("skipped"):
                    state.skipped_steps += 1
                    _non_finite(inputs, state, window, values)
                with guard(f"logging step {state.step}"):
                    _report(inputs, state, total, values, tokens_seen, started, state.step - first_step)
                if _periodic(state.step, cfg.eval_every, total) and inputs.evaluate is not None:
                    with guard(f"evaluating at step {state.step}"):  # the main process decides for all
                        state.stopped_early = world.on_model(lambda: _evaluate(inputs, state))
                if _periodic(state.step, cfg.save_every, total) or state.stopped_early:
                    with guard(f"writing the checkpoint of step {state.step}"):
                        # taken whole by the main process, with every process's help under FSDP
                        taken = checkpoint.snapshot(model, optimizer) if world.main or world.sharded else None
                        state.data_position = plan.position()
                        world.from_main(partial(checkpoint.write_checkpoint, inputs.checkpoint_dir, state.step,
                                                taken, state.as_json(), cfg.keep_last))
                if state.stopped_early:
                    inputs.console.info(f"early stopping at step {state.step}: the held-out "
                                        f"{cfg.early_stopping_metric} did not improve for "
                                        f"{cfg.early_stopping_patience} evaluations")
                    break
    finally:
        inputs.console.stop_training()
    return state


def train_step(inputs: LoopInputs, optimizer: torch.optim.Optimizer, window: list[list[TrainExample]], lr: float,
               step: int = 0, forward_model: torch.nn.Module | None = None) -> dict[str, float]:
    """One optimizer step over an accumulation window (this process's share of it); the loss is normalised by
    the whole window's label tokens."""
    world = distributed.world()
    kind = inputs.objective.kind  # its records' batches, padded or packed
    share = world.share(window)
    # a window shorter than the processes (an epoch's end): a process with no micro-batch of its own runs the
    # first one at weight zero, so it still joins the gradient exchange
    idle = not share
    share = share or [(0, window[0])]
    micro_batches = [micro for _, micro in share]
    metrics: dict[str, float] = {}
    if inputs.rollout is not None:
        micro_batches, extras, metrics = inputs.rollout(micro_batches)
    batches = [to_device(kind.collate(examples, inputs.pad_id, inputs.cfg.packing), inputs.device)
               for examples in micro_batches]
    if inputs.rollout is not None:
        for batch, extra in zip(batches, extras, strict=True):
            batch.update(to_device(extra, inputs.device))
    ctx = window_context(batches, inputs.objective_params, inputs.frozen)
    if world.active:  # the counts of the whole window, over every process's share
        labels, examples = world.sum([0, 0] if idle else [ctx.num_label_tokens, ctx.num_examples])
        ctx = replace(ctx, num_label_tokens=int(labels), num_examples=int(examples))
    if inputs.objective.prepare is not None:
        with torch.no_grad(), inputs.autocast():
            metrics |= inputs.objective.prepare(inputs.model, batches, ctx)
    # an online objective may take several optimizer steps on one rollout (PPO epochs); figures are their mean
    updates = inputs.updates
    losses, summed, grad_norms, skipped = [], {}, [], False
    for update in range(updates):
        # dropout's masks: one seed per micro-batch of the window, the same whichever process runs it
        seeds = [_micro_seed(inputs.cfg.seed, step, update, index) for index, _ in share]
        loss, update_metrics, grad_norm, update_skipped = _update(inputs, forward_model or inputs.model, optimizer,
                                                                  batches, seeds, ctx, lr, idle)
        losses.append(loss)
        grad_norms.append(grad_norm)
        skipped |= update_skipped
        for key, value in update_metrics.items():
            summed[key] = summed.get(key, 0.0) + value / updates
    tokens = int(world.sum([0 if idle else sum(int(b["num_tokens"]) for b in batches)])[0])
    return {"loss": sum(losses) / updates, "grad_norm": sum(grad_norms) / updates, "lr": lr, "tokens": tokens,
            "label_tokens": ctx.num_label_tokens, "skipped": skipped, **metrics, **summed}


def _update(inputs: LoopInputs, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
            batches: list[dict[str, torch.Tensor]], seeds: list[int], ctx: LossContext, lr: float,
            idle: bool = False) -> tuple[float, dict[str, float], float, bool]:
    """Forward and backward over the micro-batches (through `model`: the DDP wrapper in a distributed world),
    then one optimizer step unless the loss or the gradient is not finite (such a step never reaches the
    weights)."""
    world = distributed.world()
    penalty = None
    if inputs.penalty is not None:  # first, so the last micro-batch's gradient exchange carries it
        term = inputs.penalty(inputs.model)
        if world.main:  # once: the processes' gradients are summed
            term.backward()
        penalty = float(term.detach())
    loss_total = torch.zeros((), device=inputs.device)
    metrics: dict[str, float] = {}
    for position, (batch, seed) in enumerate(zip(batches, seeds, strict=True)):
        torch.manual_seed(seed)
        with world.no_sync(model, last=position == len(batches) - 1):
            with inputs.autocast():
                out = inputs.objective.loss(model, batch, ctx)
            (out.loss * 0 if idle else out.loss).backward()
        if idle:
            continue
        loss_total += out.loss.detach()
        for key, value in out.metrics.items():
            metrics[key] = metrics.get(key, 0.0) + value
    loss, *summed = world.sum([float(loss_total), *metrics.values()])
    metrics = dict(zip(metrics, summed, strict=True))
    if penalty is not None:
        loss += penalty
        metrics["penalty"] = penalty
    params = [p for p in inputs.model.parameters() if p.requires_grad]
    max_norm = inputs.cfg.max_grad_norm or math.inf
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True))
    skipped = not (math.isfinite(loss) and math.isfinite(grad_norm))
    if not skipped:
        set_lr(optimizer, lr)
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss, metrics, grad_norm, skipped


def window_context(batches: Sequence[dict[str, torch.Tensor]], params: ObjectiveParams,
                   frozen: Frozen) -> LossContext:
    """The loss context of a window of micro-batches: its label-token and example counts normalise the loss."""
    return LossContext(num_label_tokens=sum(count_label_tokens(b) for b in batches),
                       num_examples=sum(int(b["num_examples"]) for b in batches), params=params,
                       reference=frozen.reference, teacher=frozen.teacher)


def _non_finite(inputs: LoopInputs, state: LoopState, window: list[list[TrainExample]], values: dict) -> None:
    """A step whose loss or gradient was NaN or inf never reached the weights; say which step and samples,
    then go on or stop as `train.nonfinite` says (the last checkpoint stays the last good state)."""
    where = ", ".join(e.example.location for micro in window for e in micro[:3])
    message = (f"step {state.step}: the loss ({values['loss']}) or gradient norm ({values['grad_norm']}) is not "
               f"finite, on samples {values['samples']} ({where} ...)")
    values["nonfinite"] = True
    if inputs.cfg.nonfinite == "stop":
        inputs.metrics.log(state.step, "nonfinite", {"loss": values["loss"], "grad_norm": values["grad_norm"],
                                                      "samples": values["samples"]})
        raise TrainingError(f"{message}; stopped (train.nonfinite: stop), the weights were not updated\n  fix: "
                            "lower train.lr, keep train.max_grad_norm set, check those records, or set "
                            "train.nonfinite: skip; --resume continues from the last checkpoint")
    inputs.console.info(f"warning: {message}; step skipped, the weights were not updated")


def _report(inputs: LoopInputs, state: LoopState, total: int, values: dict, tokens_seen: int, started: float,
            steps_done: int) -> None:
    elapsed = time.perf_counter() - started
    values["tokens_per_s"] = tokens_seen / max(elapsed, 1e-9)
    inputs.metrics.log(state.step, "train", values)
    if state.step % inputs.cfg.log_every == 0 or state.step == total:
        eta = elapsed / max(steps_done, 1) * (total - state.step)
        inputs.console.step(state.step, total, values, eta)


def _evaluate(inputs: LoopInputs, state: LoopState) -> bool:
    """Evaluate, log, cut the rate on a plateau, and say whether to stop early."""
    cfg = inputs.cfg
    result = inputs.evaluate()
    inputs.metrics.log(state.step, "eval", result)
    shown = "  ".join(f"{k.replace('_', ' ')} {v:.4g}" for k, v in flat_scores(result).items())
    inputs.console.info(f"eval at step {state.step}: {shown}")
    monitored = monitored_value(result, cfg.early_stopping_metric)
    if state.best_eval_loss is None or monitored < state.best_eval_loss:
        state.best_eval_loss, state.evals_without_improvement = monitored, 0
        return False
    state.evals_without_improvement += 1
    if cfg.schedule == "plateau" and state.evals_without_improvement % cfg.plateau_patience == 0:
        state.lr_reductions += 1
        inputs.console.info(f"the held-out {cfg.early_stopping_metric} has not improved for "
                            f"{cfg.plateau_patience} evaluations: learning rate x{cfg.plateau_factor}")
    patience = cfg.early_stopping_patience
    return patience is not None and state.evals_without_improvement >= patience


def monitored_value(result: dict, metric: str) -> float:
    """The watched figure of an evaluation, lower being better: the loss or MSE as they are, any other metric
    negated; an online objective's held-out reward when the loss is watched (it has none)."""
    if metric not in result and metric == "loss":
        return -result["reward"]
    return result[metric] if metric in LOWER_IS_BETTER else -result[metric]


def _micro_seed(seed: int, step: int, update: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, step, update, index]).generate_state(1, np.uint64)[0] >> 1)


def _periodic(step: int, every: int, total: int) -> bool:
    return every > 0 and (step % every == 0) and step < total


def _restored_state(saved: dict, fingerprint: dict) -> LoopState:
    return LoopState(step=saved["step"], best_eval_loss=saved.get("best_eval_loss"),
                     evals_without_improvement=saved.get("evals_without_improvement", 0),
                     skipped_steps=saved.get("skipped_steps", 0), fingerprint=fingerprint,
                     lr_reductions=saved.get("lr_reductions", 0), data_position=saved.get("data_position"))


def peak_memory_gib(device: torch.device) -> float:
    """Peak memory so far: max allocated on CUDA, the process's peak resident set on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

