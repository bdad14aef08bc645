"""The pieces every strategy assembles a training phase from, in the order that keeps the user's time safe:
what the config asks for (a `Recipe`, read by `runs.recipe`: seconds, nothing loaded), read and tokenize the data
(`prepare_data`), build the model once and keep it in memory (`open_session`: the method applied, weights in
their precision, the frozen reference), then per phase an evaluator over the test data (`make_evaluator`) and
the loop's inputs (`loop_inputs`) for `train_loop`. Nothing here writes a run directory: that is `runs.Run`'s.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import torch

from tuneforge.config import LoadedConfig
from tuneforge.data.dataset import TrainExample
from tuneforge.data.kinds import load_splits
from tuneforge.data.kinds.labels import LabelSet
from tuneforge.data.stream import StreamedExamples
from tuneforge.engine import precision
from tuneforge.engine.console import Metrics, RunConsole
from tuneforge.engine.heldout import heldout_scores
from tuneforge.engine.labelled import (
    head_of,
    labelled_scores,
)
from tuneforge.engine.loop import LoopInputs
from tuneforge.engine.optim import layer_lr_decay
from tuneforge.engine.rollout import OnPolicy, Rollouts, heldout_rewards
from tuneforge.engine.teacher import TeacherSource, load_teacher, teacher_answers
from tuneforge.errors import ConfigError
from tuneforge.evaluation.evaluate import generation_metrics
from tuneforge.evaluation.metrics import GENERATION_METRICS
from tuneforge.evaluation.multiple_choice import Question, bench_scores, read_questions
from tuneforge.methods import Method, trainable_summary
from tuneforge.methods.base import MethodParams, train_head
from tuneforge.models.load import load_model, load_tokenizer
from tuneforge.models.parts import PACKABLE_ENCODERS, packable_encoder
from tuneforge.objectives import Objective
from tuneforge.objectives.base import Frozen
from tuneforge.objectives.params import GkdParams, ObjectiveParams


@dataclass(frozen=True)
class Recipe:
    """What the config asks to train, checked before anything loads: the method and objective with their
    parameters, the rewards of an online objective, and a distillation objective's teacher."""

    method: Method
    method_params: MethodParams
    objective: Objective
    objective_params: ObjectiveParams
    rewards: list
    teacher: TeacherSource | None = None


@dataclass
class Prepared:
    train: list[TrainExample] | StreamedExamples
    test: list[TrainExample]
    test_raw: list
    tokenizer: object
    chat: bool
    stats: dict
    labels: LabelSet | None = None  # a classification task's classes (the head's outputs)
    bench: list[Question] | None = None  # eval.bench's multiple-choice questions

    def in_memory(self) -> list[TrainExample]:
        """The training and test examples held in memory (streamed training data is not)."""
        return [*([] if isinstance(self.train, StreamedExamples) else self.train), *self.test]

    def test_sets(self) -> dict[str | None, tuple[list[TrainExample], list]]:
        """The test data by task (encoded, raw); one set under None when the test entries name no task."""
        tasks = sorted({e.example.task for e in self.test} | {e.task for e in self.test_raw}, key=str)
        if tasks in ([None], []):
            return {None: (self.test, self.test_raw)}
        return {task: ([e for e in self.test if e.example.task == task], [e for e in self.test_raw if e.task == task])
                for task in tasks}


def prepare_data(loaded: LoadedConfig, console: RunConsole | None, recipe: Recipe) -> Prepared:
    """Read and check all data by the objective's kind (no tokenizer yet), then tokenize it (the training data with
    the length policy; the test data's first `eval.max_examples` per task)."""
    cfg, kind = loaded.run, recipe.objective.kind
    notes: list[str] = []
    splits = load_splits(loaded, recipe.objective, notes)
    for note in notes if console else ():
        console.info(note)
    train_raw, test_raw, labels = kind.split(loaded, splits)
    train_raw = kind.answered(train_raw, lambda records: teacher_answers(recipe.teacher, cfg, recipe.objective_params,
                                                                         records, console))
    tokenizer = load_tokenizer(cfg.model)
    if cfg.eval.max_examples:
        test_raw = first_per_task(test_raw, cfg.eval.max_examples)
    encoded = kind.encode(train_raw, test_raw, tokenizer, cfg.data, labels, console)
    bench = (read_questions(loaded.resolve_path(cfg.eval.bench.data), cfg.eval.bench.columns) if cfg.eval.bench
             else None)
    return Prepared(encoded.train, encoded.test, test_raw, tokenizer, encoded.chat, encoded.stats, labels, bench)


def first_per_task(examples: list, limit: int) -> list:
    """The first `limit` examples of each task's test set (or of the one set)."""
    seen: Counter = Counter()
    kept = []
    for example in examples:
        seen[example.task] += 1
        if seen[example.task] <= limit:
            kept.append(example)
    return kept


@dataclass
class Session:
    """The model being trained, kept in memory for every phase of a strategy, with the contexts its forwards
    run under and the frozen reference (the model as it was before training)."""

    recipe: Recipe
    model: torch.nn.Module
    device: torch.device
    precision: str
    autocast: Callable[[], AbstractContextManager]  # generation
    scoring: Callable[[], AbstractContextManager]  # the objective's forwards (exact log-ratios where needed)
    frozen: Frozen  # the reference (the model before training) and a teacher, where the objective uses them

    def summary(self) -> dict:
        trainable, total = trainable_summary(self.model)
        return {"precision": self.precision, "trainable_parameters": trainable, "parameters": total}


def open_session(loaded: LoadedConfig, recipe: Recipe, console: RunConsole,
                 examples: Sequence[TrainExample] = (), labels: LabelSet | None = None) -> Session:
    """The base model with the method applied (and any part the objective trains, e.g. a reward head),
    weights in the chosen precision, on the device; the reference is made now, before any checkpoint is
    restored, so it is the model before training. A distillation teacher is loaded too; one whose top-k is
    cached (`objective.cache`) is computed once over `examples` (the phase's data), or read from the cache. A
    classification task's model has a new head for `labels`, trained by every method."""
    cfg, method, objective = loaded.run, recipe.method, recipe.objective
    device = precision.pick_device()
    chosen = precision.resolve_precision(cfg.train.precision, device)
    teacher = load_teacher(recipe.teacher, recipe.objective_params, chosen, device, examples, cfg.eval.batch_size)
    if teacher is not None:
        console.info(f"teacher {recipe.objective_params.teacher}: {teacher.describe()}")
    torch.manual_seed(cfg.train.seed)  # method initialisation (e.g. LoRA A) follows the run's seed
    # a quantized base dequantizes into this dtype (fp32 where the objective compares log-probabilities)
    load_kwargs = method.load_base_kwargs(recipe.method_params, precision.dtype(chosen, objective.needs_reference))
    if chosen == "bf16":
        # the checkpoint's own dtype: a bf16 checkpoint is not widened to fp32 in memory only to be narrowed
        # again (an 8B model would pass through 32 GB); trainable weights are widened to fp32 below, exactly
        load_kwargs.setdefault("dtype", "auto")
    if labels is not None and device.type == "cpu" and chosen == "bf16":
        # SDPA's bf16 backward on a CPU is several times slower than eager attention's products of the same
        # shapes: a default-encoder LoRA step 324 -> 127 ms padded, 209 -> 102 packed (`python -m
        # bench.attention_cpu`, AMX Xeon, 2 threads); in fp32 the two are level
        load_kwargs.setdefault("attn_implementation", "eager")
    model = method.apply(load_model(cfg.model, head_of(labels), **load_kwargs), recipe.method_params)
    if labels is not None:
        train_head(model)
        if cfg.train.packing and packable_encoder(model) is None:
            raise ConfigError(f"{loaded.where('train', 'packing')}: packing a {cfg.task} batch needs a BERT-style "
                              f"encoder ({', '.join(PACKABLE_ENCODERS)}); {model.config.model_type} is not one\n"
                              "  fix: set train.packing: false")
    if objective.attach:
        objective.attach(model)
    precision.cast_frozen_weights(model, chosen)
    if cfg.train.gradient_checkpointing:
        precision.enable_gradient_checkpointing(model)
    precision.move_to(model, device)
    trainable, total = trainable_summary(model)
    console.info(f"model {cfg.model.path}: {total / 1e6:.1f}M parameters; method {method.name}: "
                 f"{trainable:,} trainable ({100 * trainable / total:.2f}%); precision "
                 f"{precision.describe(chosen, objective.needs_reference)}")
    return Session(recipe, model, device, chosen, precision.autocast_factory(chosen, device),
                   precision.autocast_factory(chosen, device, exact_ratios=objective.needs_reference),
                   Frozen(method.reference(model) if objective.needs_reference else None, teacher))


Evaluate = Callable[..., tuple[dict, list[dict]]]  # (generate: bool) -> (scores, samples)


def make_evaluator(session: Session, prepared: Prepared, cfg) -> Evaluate:
    """Scores of the model on the prepared test data: the objective's own held-out scores (loss, or the
    held-out reward of an online objective), and with `generate` the generation metrics too."""
    model, recipe = session.model, session.recipe
    objective, params, rewards = recipe.objective, recipe.objective_params, recipe.rewards
    sets = prepared.test_sets()  # split by task once, not at every evaluation

    def evaluate(generate: bool) -> tuple[dict, list[dict]]:
        """Per test set when the test entries name tasks: each task's scores under `tasks`, and their mean at
        the top level (what early stopping watches)."""
        if list(sets) == [None]:
            scores, samples = evaluate_set(*sets[None], generate)
        else:
            per_task, samples = {}, []
            for task, (test, test_raw) in sets.items():
                per_task[task], task_samples = evaluate_set(test, test_raw, generate)
                samples += [{"task": task, **sample} for sample in task_samples]
            keys = [k for k in per_task[next(iter(per_task))] if all(k in s for s in per_task.values())]
            mean = {k: sum(s[k] for s in per_task.values()) / len(per_task) for k in keys}
            scores = {**mean, "tasks": per_task}
        if generate and prepared.bench:  # the benchmark at the full evaluations (before, after), not every eval
            bench = cfg.eval.bench
            scores.update(bench_scores(model, prepared.tokenizer, prepared.bench, shots=bench.shots, style=bench.style,
                                       batch_size=cfg.eval.batch_size, autocast=session.autocast)[0])
        return scores, samples

    def evaluate_set(test: list[TrainExample], test_raw: list, generate: bool) -> tuple[dict, list[dict]]:
        scores: dict = {}
        samples: list[dict] = []
        if not test:
            return scores, samples
        if prepared.labels is not None:  # a classification task: every metric comes from one forward pass
            return labelled_scores(model, test, prepared.labels, prepared.tokenizer.pad_token_id,
                                   cfg.eval.batch_size, session.autocast)
        if rewards:  # an online objective: the mean reward of greedy completions (its loss needs rollouts)
            scores, samples = heldout_rewards(model, prepared.tokenizer, test_raw, rewards,
                                              chat=prepared.chat, batch_size=cfg.eval.batch_size,
                                              max_new_tokens=params.max_new_tokens, autocast=session.autocast)
            if generate:
                scores.update(generation_metrics(
                    model, prepared.tokenizer, test_raw, cfg.eval.metrics, chat=prepared.chat,
                    batch_size=cfg.eval.batch_size, max_new_tokens=params.max_new_tokens,
                    autocast=session.autocast)[0])
            return scores, samples
        if "loss" in cfg.eval.metrics or not generate:
            scores.update(heldout_scores(model, objective, params, test, prepared.tokenizer.pad_token_id,
                                         cfg.eval.batch_size, session.scoring, session.frozen))
        if generate:
            generated, samples = generation_metrics(
                model, prepared.tokenizer, test_raw, cfg.eval.metrics, chat=prepared.chat,
                batch_size=cfg.eval.batch_size, max_new_tokens=cfg.eval.max_new_tokens, autocast=session.autocast)
            scores.update(generated)
        return scores, samples

    return evaluate


def loop_inputs(session: Session, prepared: Prepared, cfg, metrics: Metrics, console: RunConsole,
                checkpoint_dir: Path, evaluate: Evaluate) -> LoopInputs:
    """What `train_loop` needs for one phase on the session's model."""
    recipe = session.recipe
    method, params = recipe.method, recipe.method_params
    watched = cfg.train.early_stopping_metric  # a generation metric makes periodic evaluations generate
    return LoopInputs(
        session.model, recipe.objective, prepared.train, cfg.train, prepared.tokenizer.pad_token_id, session.device,
        session.scoring, metrics, console, checkpoint_dir,
        evaluate=(lambda: evaluate(generate=watched in GENERATION_METRICS)[0]) if prepared.test else None,
        objective_params=recipe.objective_params, frozen=session.frozen,
        lr_scale=lr_scales(session.model, method, params, cfg.train.layer_lr_decay),
        rollout=Rollouts(session.model, prepared.tokenizer, prepared.chat, recipe.objective, recipe.objective_params,
                         recipe.rewards, session.autocast) if recipe.rewards else _on_policy(session, prepared, cfg),
        updates=getattr(recipe.objective_params, "updates", 1))


def lr_scales(model, method: Method, params: MethodParams, layer_decay: float | None) -> Callable | None:
    """Each parameter's learning-rate multiplier: the method's (LoRA+) times layer-wise decay (LLRD)."""
    by_layer = layer_lr_decay(model, layer_decay) if layer_decay is not None else None
    if method.lr_scale is None:
        return by_layer
    if by_layer is None:
        return lambda name: method.lr_scale(name, params)
    return lambda name: method.lr_scale(name, params) * by_layer(name)


def _on_policy(session: Session, prepared: Prepared, cfg) -> OnPolicy | None:
    """On-policy distillation's sampler, for an objective that mixes in the student's own answers (gkd)."""
    params = session.recipe.objective_params
    if not isinstance(params, GkdParams) or params.lam == 0:
        return None
    return OnPolicy(session.model, prepared.tokenizer, prepared.chat, params, cfg.train.seed, session.autocast)
