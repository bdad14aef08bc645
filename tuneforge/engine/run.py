"""A whole run, in the order that keeps the user's time and disk safe: validate config and data first
(seconds, nothing written), then load the model, then create the run directory and train, evaluate, save.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tuneforge.config import LoadedConfig, dump_yaml, load_config
from tuneforge.data.dataset import TrainExample, encode_examples
from tuneforge.data.render import use_chat_template
from tuneforge.engine import checkpoint, paths, precision
from tuneforge.engine.datakind import load_splits
from tuneforge.engine.heldout import heldout_scores
from tuneforge.engine.lock import run_lock
from tuneforge.engine.loop import LoopInputs, LoopState, train_loop
from tuneforge.engine.resources import resource_guard
from tuneforge.engine.rollout import Rollouts, heldout_rewards
from tuneforge.engine.tracking import MetricsLog, RunConsole
from tuneforge.engine.trained import resolve_rewards
from tuneforge.errors import CheckpointError, ConfigError, RunDirError
from tuneforge.evaluation.evaluate import generation_metrics
from tuneforge.methods import get_method, trainable_summary, validate_method_params
from tuneforge.models.load import load_causal_lm, load_tokenizer
from tuneforge.objectives import Objective, get_objective, validate_objective_params

CHECKPOINTS = "checkpoints"
EVAL_FILE = "eval.json"
RUN_FILE = "run.json"


@dataclass
class RunResult:
    run_dir: Path
    steps: int
    train: dict = field(default_factory=dict)
    eval_before: dict = field(default_factory=dict)
    eval_after: dict = field(default_factory=dict)


@dataclass
class Prepared:
    train: list[TrainExample]
    test: list[TrainExample]
    test_raw: list
    tokenizer: object
    chat: bool
    stats: dict


def run(loaded: LoadedConfig, *, resume: bool = False, force: bool = False, quiet: bool = False) -> RunResult:
    cfg = loaded.run
    console = RunConsole(quiet=quiet)
    method = get_method(cfg.method.name)
    params = validate_method_params(cfg.method, loaded.where("method"))
    objective = get_objective(cfg.objective.name)
    objective_params = validate_objective_params(cfg.objective, loaded.where("objective"))
    rewards = (resolve_rewards(objective_params, loaded.where("objective"), loaded.resolve_path)
               if objective.data == "prompts" else [])
    if cfg.train.packing and not method.supports_packing:
        raise ConfigError(f"{loaded.where('train', 'packing')}: method '{method.name}' prepends virtual tokens to "
                          "every sequence, so sequences cannot share a packed row\n  fix: set train.packing: false")
    run_dir = resolve_run_dir(loaded)

    def guard(doing: str) -> AbstractContextManager:  # out of memory or disk: say what to change
        return resource_guard(doing, run_dir / CHECKPOINTS, cfg.train)

    with run_lock(run_dir):  # a second run on the same directory stops here, before it loads anything
        resume_from = _check_run_dir(run_dir, resume, cfg.output.overwrite,
                                     _inputs(loaded) if cfg.output.overwrite and not resume else ())
        prepared = prepare_data(loaded, console, objective)
        fingerprint = _fingerprint(cfg, prepared)
        if resume_from is not None:
            _check_same_run(run_dir, resume_from, cfg, fingerprint, force, console)
        device = precision.pick_device()
        with guard("loading the model"):
            model, chosen = _build_model(cfg, method, params, device, console, objective)
        autocast = precision.autocast_factory(chosen, device)  # generation
        scoring = precision.autocast_factory(chosen, device, exact_ratios=objective.needs_reference)  # the loss
        # made before any checkpoint is restored, so it is the model before training
        reference = method.reference(model) if objective.needs_reference else None

        trainable, total = trainable_summary(model)
        status = {"fingerprint": fingerprint, "precision": chosen, "trainable_parameters": trainable,
                  "parameters": total, "data": prepared.stats}
        with guard("creating the run directory"):
            _create_run_dir(run_dir, resume_from is not None, cfg.output.overwrite)
            (run_dir / "config.yaml").write_text(dump_yaml(cfg))
            prepared.tokenizer.save_pretrained(run_dir / "tokenizer")
            _write_json(run_dir / RUN_FILE, {"status": "training", **status})

        evaluate = _evaluator(model, prepared, cfg, (autocast, scoring), objective, objective_params, reference,
                              rewards)
        eval_before = {}
        if cfg.eval.compare_base and not resume_from:
            with guard("evaluating the base model"):
                eval_before = _evaluate_base(evaluate, run_dir, console)
        metrics = MetricsLog(run_dir, cfg.output.tensorboard, resume_step=_step_of(resume_from))
        started = time.perf_counter()
        try:
            inputs = LoopInputs(model, objective, prepared.train, cfg.train, prepared.tokenizer.pad_token_id, device,
                                scoring, metrics, console, run_dir / CHECKPOINTS,
                                evaluate=(lambda: evaluate(generate=False)[0]) if prepared.test else None,
                                objective_params=objective_params, reference=reference,
                                lr_scale=(lambda name: method.lr_scale(name, params)) if method.lr_scale else None,
                                rollout=Rollouts(model, prepared.tokenizer, prepared.chat, objective, objective_params,
                                                 rewards, autocast) if rewards else None,
                                updates=getattr(objective_params, "updates", 1))
            state = train_loop(inputs, LoopState(fingerprint=status["fingerprint"]), resume_from)
            wall = time.perf_counter() - started
            checkpoint.require_finite(checkpoint.trainable_state(model), "the trained weights")
            with guard("saving the trained weights"):
                method.save(model, run_dir)
                if objective.save:
                    objective.save(model, run_dir)
            with guard("evaluating the trained model"):
                eval_after, samples = evaluate(generate=True)
                if eval_after:
                    metrics.log(state.step, "final_eval", eval_after)
        finally:
            metrics.close()
        if resume_from is not None:
            eval_before = _read_json(run_dir / EVAL_FILE).get("before", {})
        summary = {"steps": state.step, "wall_s": round(wall, 1), "skipped_steps": state.skipped_steps,
                   "stopped_early": state.stopped_early}
        with guard("writing the run's results"):
            _write_json(run_dir / EVAL_FILE, {"before": eval_before, "after": eval_after, "samples": samples[:50]})
            weights = {str(p.relative_to(run_dir)): checkpoint.sha256_of(p) for p in
                       sorted(run_dir.glob("**/*.safetensors")) if p.relative_to(run_dir).parts[0] != CHECKPOINTS}
            _write_json(run_dir / RUN_FILE, {"status": "complete", **status, "train": summary,
                                             "weights_sha256": weights})
        return RunResult(run_dir, state.step, summary, eval_before, eval_after)


def _build_model(cfg, method, params, device: torch.device, console: RunConsole, objective: Objective):
    """The base model with the method applied (and any part the objective trains, e.g. a reward head),
    weights in the chosen precision, on the device."""
    chosen = precision.resolve_precision(cfg.train.precision, device)
    torch.manual_seed(cfg.train.seed)  # method initialisation (e.g. LoRA A) follows the run's seed
    # a quantized base dequantizes into this dtype (fp32 where the objective compares log-probabilities)
    load_kwargs = method.load_base_kwargs(params, precision.dtype(chosen, objective.needs_reference))
    if chosen == "bf16":
        # the checkpoint's own dtype: a bf16 checkpoint is not widened to fp32 in memory only to be narrowed
        # again (an 8B model would pass through 32 GB); trainable weights are widened to fp32 below, exactly
        load_kwargs.setdefault("dtype", "auto")
    model = method.apply(load_causal_lm(cfg.model, **load_kwargs), params)
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
    return model, chosen


def _evaluate_base(evaluate, run_dir: Path, console: RunConsole) -> dict:
    """Scores of the untrained model, saved at once so a resumed run can still report before -> after."""
    console.info("evaluating the base model ...")
    scores = evaluate(generate=True)[0]
    console.info("before: " + _format_scores(scores))
    _write_json(run_dir / EVAL_FILE, {"before": scores})
    return scores


def prepare_data(loaded: LoadedConfig, console: RunConsole | None = None,
                 objective: Objective | None = None) -> Prepared:
    """Read and validate all data (no tokenizer yet), then tokenize with the length policy."""
    cfg = loaded.run
    objective = objective or get_objective(cfg.objective.name)
    notes: list[str] = []
    splits = load_splits(loaded, objective, notes)
    train_raw, test_raw = splits["train"], splits.get("test", [])
    for note in notes if console else ():
        console.info(note)
    tokenizer = load_tokenizer(cfg.model)
    chat = use_chat_template(tokenizer, cfg.data.template)
    train, stats = encode_examples(train_raw, tokenizer, cfg.data)
    if cfg.eval.max_examples:
        test_raw = test_raw[: cfg.eval.max_examples]
    test, test_stats = encode_examples(test_raw, tokenizer, cfg.data) if test_raw else ([], None)
    summary = stats.summary()
    if console:
        console.info(f"data: {summary['kept']} training examples ({summary['truncated']} truncated, "
                     f"{summary['dropped']} dropped), {summary['tokens']} tokens, {summary['label_tokens']} trained; "
                     f"{len(test)} test examples")
        if stats.missing_end_of_turn:
            console.info(f"warning: {len(stats.missing_end_of_turn)} examples do not train an end-of-turn token "
                         f"(first: {stats.missing_end_of_turn[0]}); the model may not learn to stop")
    return Prepared(train, test, test_raw, tokenizer, chat,
                    {"train": summary, "test": test_stats.summary() if test_stats else None})


def _evaluator(model, prepared: Prepared, cfg, contexts, objective: Objective, params, reference, rewards):
    autocast, scoring = contexts  # for generating, and for the objective's own held-out scores

    def evaluate(generate: bool) -> tuple[dict, list[dict]]:
        scores: dict = {}
        samples: list[dict] = []
        if not prepared.test:
            return scores, samples
        if rewards:  # an online objective: the mean reward of greedy completions (its loss needs rollouts)
            scores, samples = heldout_rewards(model, prepared.tokenizer, prepared.test_raw, rewards,
                                              chat=prepared.chat, batch_size=cfg.eval.batch_size,
                                              max_new_tokens=params.max_new_tokens, autocast=autocast)
            if generate:
                scores.update(generation_metrics(
                    model, prepared.tokenizer, prepared.test_raw, cfg.eval.metrics, chat=prepared.chat,
                    batch_size=cfg.eval.batch_size, max_new_tokens=params.max_new_tokens, autocast=autocast)[0])
            return scores, samples
        if "loss" in cfg.eval.metrics or not generate:
            scores.update(heldout_scores(model, objective, params, prepared.test, prepared.tokenizer.pad_token_id,
                                         cfg.eval.batch_size, scoring, reference))
        if generate:
            generated, samples = generation_metrics(
                model, prepared.tokenizer, prepared.test_raw, cfg.eval.metrics, chat=prepared.chat,
                batch_size=cfg.eval.batch_size, max_new_tokens=cfg.eval.max_new_tokens, autocast=autocast)
            scores.update(generated)
        return scores, samples

    return evaluate


def resolve_run_dir(loaded: LoadedConfig) -> Path:
    if loaded.run.output.dir:
        return Path(loaded.run.output.dir)
    name = loaded.source.stem if loaded.source else "run"
    return Path("runs") / name


def _check_run_dir(run_dir: Path, resume: bool, overwrite: bool, inputs: Sequence[Path] = ()) -> Path | None:
    """Decide, before anything is written, whether this run starts fresh or resumes; None = fresh."""
    paths.require_writable_dir(run_dir, "output.dir")
    if resume:
        paths.refuse_escaping_links(run_dir, "run directory")  # before anything in it is deleted or written
        if not run_dir.is_dir():
            raise CheckpointError(f"--resume: run directory {run_dir} does not exist\n  fix: start the run without "
                                  "--resume, or set output.dir to the run to continue")
        status = _read_json(run_dir / RUN_FILE).get("status")
        if status == "complete":
            raise CheckpointError(f"--resume: the run in {run_dir} is already complete\n  fix: start a new run "
                                  "with another output.dir, or set output.overwrite=true")
        checkpoint.remove_unfinished(run_dir / CHECKPOINTS)
        found, skipped = checkpoint.latest_checkpoint(run_dir / CHECKPOINTS)
        if found is None:
            detail = f" (skipped: {'; '.join(skipped)})" if skipped else ""
            raise CheckpointError(f"--resume: no complete checkpoint in {run_dir / CHECKPOINTS}{detail}\n  fix: "
                                  "start again with output.overwrite=true (and train.save_every > 0 so the run "
                                  "writes checkpoints)")
        return found
    if run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
        raise RunDirError(f"output directory {run_dir} already holds a run\n  fix: pass --resume to continue it, "
                          "set output.overwrite=true to replace it, or choose another output.dir")
    if overwrite:
        paths.refuse_unsafe_replace(run_dir, RUN_FILE, "output.dir", inputs)
    return None


def _inputs(loaded: LoadedConfig) -> list[Path]:
    """The files a run reads that must survive it: the config, the data, a local model."""
    cfg = loaded.run
    specs = [*cfg.data.train, *(cfg.data.test or [])]
    candidates = [loaded.source, *(loaded.resolve_path(s.path) for s in specs), loaded.resolve_path(cfg.model.path)]
    return [Path(c) for c in candidates if c is not None and Path(c).exists()]


def _create_run_dir(run_dir: Path, resuming: bool, overwrite: bool) -> None:
    if not resuming and overwrite and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)


def _fingerprint(cfg, prepared: Prepared) -> dict:
    data = hashlib.sha256()
    for item in prepared.train:
        for sequence in item.sequences:  # a preference pair's rejected side is data too
            data.update(json.dumps(sequence.input_ids).encode())
            data.update(json.dumps(sequence.labels).encode())
    tokenizer = prepared.tokenizer.backend_tokenizer.to_str() + json.dumps(prepared.tokenizer.special_tokens_map,
                                                                           sort_keys=True)
    training = _training_config(cfg)
    return {"data_sha256": data.hexdigest(),
            "config_sha256": hashlib.sha256(json.dumps(training, sort_keys=True).encode()).hexdigest(),
            "tokenizer_sha256": hashlib.sha256(tokenizer.encode()).hexdigest(),
            # the settings themselves, so a resume can name what changed even if config.yaml was edited
            "training_config": training}


def _training_config(cfg) -> dict:
    """What decides the trained weights: everything but evaluation and output settings."""
    return cfg.model_dump(mode="json", exclude={"eval", "output"})


def _check_same_run(run_dir: Path, checkpoint_dir: Path, cfg, fingerprint: dict, force: bool,
                    console: RunConsole) -> None:
    """A resume continues the run that wrote the checkpoint: the same data, training config and tokenizer,
    or it stops naming what changed (unless forced)."""
    saved = _read_json(checkpoint_dir / "state.json").get("fingerprint", {})
    changed = [name for name in ("data", "config", "tokenizer")
               if f"{name}_sha256" in saved and saved[f"{name}_sha256"] != fingerprint[f"{name}_sha256"]]
    if not changed:
        return
    details = []
    if "data" in changed:
        details.append("the training data (its tokens or labels) changed")
    if "config" in changed:
        before = saved.get("training_config") or _training_config(load_config(run_dir / "config.yaml").run)
        keys = _changed_keys(before, _training_config(cfg))
        details.append("config keys changed: " + (", ".join(keys) or "(a default value)"))
    if "tokenizer" in changed:
        details.append("the tokenizer changed")
    message = f"--resume: this is not the run in {run_dir}: " + "; ".join(details)
    if force:
        console.info(f"warning: {message}; continuing because of --force")
        return
    raise CheckpointError(f"{message}\n  fix: resume with the original config and data, start a new run in "
                          "another output.dir, or pass --force to continue with the changes")


def _changed_keys(old, new, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [key for name in sorted(set(old) | set(new))
                for key in _changed_keys(old.get(name), new.get(name), f"{prefix}{name}.")]
    return [] if old == new else [f"{prefix.rstrip('.')} ({old!r} -> {new!r})"]


def _step_of(path: Path | None) -> int | None:
    return int(path.name.split("-")[-1]) if path is not None else None


def _format_scores(scores: dict) -> str:
    return "  ".join(f"{k} {v:.4g}" for k, v in scores.items())


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)
