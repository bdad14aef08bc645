"""Using a finished run: load its model (base + adapter, or the full model) and evaluate it on new data."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from tuneforge.config import DataConfig, DatasetSpec, RunConfig, load_config
from tuneforge.data.dataset import TrainExample, encode_examples, load_examples
from tuneforge.data.formats import Example
from tuneforge.data.kinds.labels import LabelSet
from tuneforge.data.render import encode_batch, use_chat_template
from tuneforge.engine import precision
from tuneforge.engine.labelled import head_of
from tuneforge.engine.rollout import Rewards
from tuneforge.engine.teacher import TeacherSource
from tuneforge.errors import ConfigError, RunDirError
from tuneforge.evaluation.rewards import resolve_reward
from tuneforge.methods import get_method, validate_method_params
from tuneforge.methods.base import frozen_copy_reference
from tuneforge.models.load import load_causal_lm, load_model
from tuneforge.objectives import get_objective
from tuneforge.objectives.params import OnlineParams
from tuneforge.runs.identity import run_identity, verify_weights
from tuneforge.runs.layout import ADAPTERS, COMPLETE, CONFIG_FILE, RUN_FILE, read_json, status_of


@dataclass
class TrainedRun:
    run_dir: Path
    config: RunConfig
    model: torch.nn.Module
    tokenizer: object
    autocast: object  # for generation
    scoring: object  # for the objective's own scores (exact log-ratios where it compares with a reference)
    labels: LabelSet | None = None  # a classification run's classes


def load_trained(run_dir: str | Path, *, full_precision_base: bool = False, precision_override: str | None = None
                 ) -> TrainedRun:
    """A finished run's model, ready for inference in the run's precision (or `precision_override`).
    `full_precision_base` loads the base unquantized even for a quantized method (qlora), as merging needs."""
    from transformers import AutoTokenizer

    run_dir = Path(run_dir)
    cfg = require_run_dir(run_dir)
    verify_weights(run_dir)  # a damaged weight file is refused by name, not read
    method = get_method(cfg.method.name)
    device, chosen = precision.inference_placement(precision_override or cfg.train.precision)
    objective = get_objective(cfg.objective.name)
    base_kwargs = {} if full_precision_base else method.load_base_kwargs(
        validate_method_params(cfg.method), precision.dtype(chosen, objective.needs_reference))
    labels = LabelSet.read(run_dir) if cfg.task != "causal_lm" else None
    model = method.load(run_dir, lambda: load_model(cfg.model, head_of(labels), **base_kwargs))
    if objective.load:
        objective.load(model, run_dir)
    precision.ready_for_inference(model, chosen, device)
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "tokenizer")
    return TrainedRun(run_dir, cfg, model, tokenizer, precision.autocast_factory(chosen, device),
                      precision.autocast_factory(chosen, device, exact_ratios=objective.needs_reference), labels)


def require_run_dir(run_dir: Path) -> RunConfig:
    """The config of a finished run directory, or a located error saying what is missing."""
    config_path = Path(run_dir) / "config.yaml"
    if not config_path.is_file():
        raise RunDirError(f"{run_dir} is not a tuneforge run directory (no config.yaml)\n  fix: pass the directory "
                          "a `tuneforge train` run wrote, e.g. runs/quickstart")
    cfg = load_config(config_path).run
    method = get_method(cfg.method.name)
    if not (Path(run_dir) / method.output_subdir).is_dir():
        strategy = read_json(Path(run_dir) / RUN_FILE).get("strategy") or {}
        if strategy.get("adapters") == "per_task" and status_of(run_dir) == COMPLETE:  # an adapter per task
            tasks = [str(Path(run_dir) / ADAPTERS / task) for task in strategy.get("tasks", [])]
            raise RunDirError(f"{run_dir} is a per-task multitask run: it trained one adapter per task, each a run of "
                              f"its own ({', '.join(tasks[:4])})\n  fix: give one of them"
                              f"{f', e.g. {tasks[0]}' if tasks else ''} (chat and merge take the whole run)")
        raise RunDirError(f"{run_dir} has no {method.output_subdir}/ — the run did not finish\n  fix: resume it with "
                          "`tuneforge train <config> --resume`, or use a finished run")
    return cfg


def reference_of(trained: TrainedRun):
    """The model the run was trained against, as training chose it (`Method.reference`): the base inside the
    trained model (an adapter switched off) where the method keeps one, else the base loaded again (training
    took a frozen copy before the first step), each weight in the dtype that copy had: the trained model's,
    fp32 where the method trained it, the frozen precision elsewhere."""
    method = get_method(trained.config.method.name)
    if method.reference is not frozen_copy_reference:
        return method.reference(trained.model)
    base = load_causal_lm(trained.config.model)
    dtypes = {name: param.dtype for name, param in trained.model.named_parameters()}
    for name, param in base.named_parameters():
        param.data = param.data.to(dtypes.get(name, param.dtype))
    precision.move_to(base, next(trained.model.parameters()).device)
    base.eval()  # frozen already (load_causal_lm), and nothing else holds it: no copy needed
    return lambda: nullcontext(base)


def _require_reward_run(trained_or_cfg, run_dir: Path) -> None:
    if get_objective(trained_or_cfg.objective.name).name != "reward":
        raise RunDirError(f"{run_dir} did not train a reward model (objective "
                          f"'{trained_or_cfg.objective.name}')\n  fix: score with a run of objective: reward")


@torch.no_grad()
def sequence_scores(trained: TrainedRun, encoded: Sequence[TrainExample], batch_size: int = 16) -> list[float]:
    """A reward run's score of every sequence of the encoded examples, in `batch_sequences` order per chunk."""
    from tuneforge.data.batching import collate, model_device, to_device
    from tuneforge.objectives.reward import sequence_rewards

    scores: list[float] = []
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start: start + batch_size]
        with trained.autocast():
            batch = to_device(collate(chunk, trained.tokenizer.pad_token_id), model_device(trained.model))
            scores += sequence_rewards(trained.model, batch).float().tolist()
    return scores


def score_rewards(trained: TrainedRun, data_path: str, *, batch_size: int = 16) -> tuple[list[dict], dict]:
    """A reward run's score of each completion in a file: prompt/completion (or any SFT format) records get
    one reward each; preference pairs get both, and the share of pairs whose chosen scores higher."""
    _require_reward_run(trained.config, trained.run_dir)
    data_cfg: DataConfig = trained.config.data.model_copy(update={"train": [DatasetSpec(path=data_path)]})
    encoded, _ = encode_examples(load_examples(data_cfg.train, seed=0), trained.tokenizer, data_cfg)
    rows: list[dict] = []
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start: start + batch_size]
        rewards = sequence_scores(trained, chunk, batch_size)
        for index, item in enumerate(chunk):
            row = {"where": item.example.location, "reward": rewards[index]}
            if item.rejected is not None:
                row = {"where": item.example.location, "chosen": rewards[index],
                       "rejected": rewards[len(chunk) + index]}
            rows.append(row)
    pairs = [r for r in rows if "chosen" in r]
    summary = {"examples": len(rows)}
    if pairs:
        summary["pair_accuracy"] = sum(r["chosen"] > r["rejected"] for r in pairs) / len(pairs)
    return rows, summary


class RewardModelScore:
    """A trained reward model as an online-RL reward: the score of each completion as the answer to its
    prompt (one user turn, rendered with the reward run's own template). The run is checked when the config
    is read and its weights load on the first rollout."""

    def __init__(self, run_dir: str, where: str):
        self.run_dir = Path(run_dir)
        if not (self.run_dir / "config.yaml").is_file():
            raise ConfigError(f"{where}.model: {run_dir} is not a finished run directory\n  fix: give the directory "
                              "a `tuneforge train` run of objective: reward wrote")
        _require_reward_run(load_config(self.run_dir / "config.yaml").run, self.run_dir)
        self._trained: TrainedRun | None = None

    def __call__(self, completions: list[str], references: list, prompts: list[str]) -> list[float]:
        if self._trained is None:
            self._trained = load_trained(self.run_dir)
        trained = self._trained
        examples = [Example("rollout", i, messages=({"role": "user", "content": p},
                                                    {"role": "assistant", "content": c}), prompt_turns=1)
                    for i, (p, c) in enumerate(zip(prompts, completions, strict=True))]
        chat = use_chat_template(trained.tokenizer, trained.config.data.template)
        encoded = [TrainExample(i, e, enc) for i, (e, enc) in
                   enumerate(zip(examples, encode_batch(examples, trained.tokenizer, chat=chat), strict=True))]
        return sequence_scores(trained, encoded)


@dataclass(frozen=True)
class RunTeacher(TeacherSource):
    """A finished tuneforge run as a distillation teacher: its model with what it trained."""

    def model(self, chosen: str, device: torch.device) -> torch.nn.Module:
        return load_trained(self.path, precision_override=chosen).model

    def identity(self) -> dict:
        """What names the teacher's outputs: the digest of every weight that produces them as they are now (the
        base model's files and the run's own), and the run's config (its template, its method)."""
        config = (Path(self.path) / CONFIG_FILE).read_text()
        return {"run": run_identity(Path(self.path), load_config(Path(self.path) / CONFIG_FILE).run.model),
                "config": config}


def resolve_rewards(params: OnlineParams, where: str, resolve_path=lambda path: path) -> Rewards:
    """The configured reward functions and reward models, checked now so a wrong name or run fails before any
    data or weights load; model paths are relative to the config file."""
    rewards = []
    for i, spec in enumerate(params.rewards):
        key = f"{where}.rewards[{i}]"
        fn = RewardModelScore(resolve_path(spec.model), key) if spec.model else resolve_reward(spec.name, key)
        rewards.append((spec.label, fn, spec.weight))
    return rewards
