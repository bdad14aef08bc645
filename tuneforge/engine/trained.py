"""Using a finished run: load its model (base + adapter, or the full model) and evaluate it on new data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from tuneforge.config import DataConfig, DatasetSpec, RunConfig, load_config
from tuneforge.data.dataset import encode_examples, load_examples
from tuneforge.data.render import use_chat_template
from tuneforge.engine import precision
from tuneforge.engine.heldout import heldout_scores
from tuneforge.engine.rollout import heldout_rewards, resolve_rewards
from tuneforge.errors import RunDirError
from tuneforge.evaluation.evaluate import generation_metrics
from tuneforge.methods import get_method, validate_method_params
from tuneforge.methods.base import adapter_disabled_reference, frozen_copy_reference
from tuneforge.models.load import load_causal_lm
from tuneforge.objectives import get_objective, validate_objective_params


@dataclass
class TrainedRun:
    run_dir: Path
    config: RunConfig
    model: torch.nn.Module
    tokenizer: object
    autocast: object


def load_trained(run_dir: str | Path, *, full_precision_base: bool = False) -> TrainedRun:
    """A finished run's model, ready for inference. `full_precision_base` loads the base unquantized even for
    a quantized method (qlora), as merging and exporting need."""
    from transformers import AutoTokenizer

    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise RunDirError(f"{run_dir} is not a tuneforge run directory (no config.yaml)\n  fix: pass the directory "
                          "a `tuneforge train` run wrote, e.g. runs/quickstart")
    cfg = load_config(config_path).run
    method = get_method(cfg.method.name)
    if not (run_dir / method.output_subdir).is_dir():
        raise RunDirError(f"{run_dir} has no {method.output_subdir}/ — the run did not finish\n  fix: resume it with "
                          "`tuneforge train <config> --resume`, or use a finished run")
    device, chosen = precision.inference_placement(cfg.train.precision)
    base_kwargs = {} if full_precision_base else method.load_base_kwargs(validate_method_params(cfg.method),
                                                                         precision.dtype(chosen))
    model = method.load(run_dir, lambda: load_causal_lm(cfg.model, **base_kwargs))
    objective = get_objective(cfg.objective.name)
    if objective.load:
        objective.load(model, run_dir)
    precision.ready_for_inference(model, chosen, device)
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "tokenizer")
    return TrainedRun(run_dir, cfg, model, tokenizer, precision.autocast_factory(chosen, device))


def evaluate_run(trained: TrainedRun, data_path: str, metrics: list[str], *, batch_size: int = 16,
                 max_new_tokens: int = 64, max_examples: int | None = None) -> tuple[dict, list[dict]]:
    """Loss and generation metrics of a trained run on a dataset file in any supported format."""
    data_cfg: DataConfig = trained.config.data.model_copy(update={"train": [DatasetSpec(path=data_path)]})
    examples = load_examples(data_cfg.train, seed=0)[:max_examples]
    objective = get_objective(trained.config.objective.name)
    scores: dict = {}
    chat = use_chat_template(trained.tokenizer, data_cfg.template)
    if objective.data == "prompts":  # online RL: the held-out reward of greedy answers, then any text metrics
        params = validate_objective_params(trained.config.objective)
        scores, samples = heldout_rewards(trained.model, trained.tokenizer, examples,
                                          resolve_rewards(params, "objective"), chat=chat, batch_size=batch_size,
                                          max_new_tokens=params.max_new_tokens, autocast=trained.autocast)
        scores.update(generation_metrics(trained.model, trained.tokenizer, examples, metrics, chat=chat,
                                         batch_size=batch_size, max_new_tokens=params.max_new_tokens,
                                         autocast=trained.autocast)[0])
        return scores, samples
    if "loss" in metrics:
        encoded, _ = encode_examples(examples, trained.tokenizer, data_cfg)
        reference = _reference(trained) if objective.needs_reference else None
        scores.update(heldout_scores(trained.model, objective, validate_objective_params(trained.config.objective),
                                     encoded, trained.tokenizer.pad_token_id, batch_size, trained.autocast,
                                     reference))
    generated, samples = generation_metrics(
        trained.model, trained.tokenizer, examples, metrics, chat=chat, batch_size=batch_size,
        max_new_tokens=max_new_tokens, autocast=trained.autocast)
    scores.update(generated)
    return scores, samples


def _reference(trained: TrainedRun):
    """The model the run was trained against: the base inside an adapter model, else the base loaded again."""
    if hasattr(trained.model, "disable_adapter"):
        return adapter_disabled_reference(trained.model)
    device, chosen = precision.inference_placement(trained.config.train.precision)
    return frozen_copy_reference(precision.ready_for_inference(load_causal_lm(trained.config.model), chosen, device))


@torch.no_grad()
def score_rewards(trained: TrainedRun, data_path: str, *, batch_size: int = 16) -> tuple[list[dict], dict]:
    """A reward run's score of each completion in a file: prompt/completion (or any SFT format) records get
    one reward each; preference pairs get both, and the share of pairs whose chosen scores higher."""
    from tuneforge.data.batching import collate, model_device, to_device
    from tuneforge.objectives.reward import sequence_rewards

    if get_objective(trained.config.objective.name).name != "reward":
        raise RunDirError(f"{trained.run_dir} did not train a reward model (objective "
                          f"'{trained.config.objective.name}')\n  fix: score with a run of objective: reward")
    data_cfg: DataConfig = trained.config.data.model_copy(update={"train": [DatasetSpec(path=data_path)]})
    encoded, _ = encode_examples(load_examples(data_cfg.train, seed=0), trained.tokenizer, data_cfg)
    rows: list[dict] = []
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start: start + batch_size]
        with trained.autocast():
            batch = to_device(collate(chunk, trained.tokenizer.pad_token_id), model_device(trained.model))
            rewards = sequence_rewards(trained.model, batch).float().tolist()
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
