"""What a run's config asks to train, read and checked before anything loads: the method and objective with their
parameters, and the rewards of an online objective (functions, or finished reward-model runs)."""

from __future__ import annotations

from pathlib import Path

from tuneforge.config import LoadedConfig, ModelConfig, model_path_from
from tuneforge.engine.session import Recipe
from tuneforge.engine.teacher import TeacherSource
from tuneforge.errors import ConfigError
from tuneforge.methods import get_method, validate_method_params
from tuneforge.models.load import load_tokenizer
from tuneforge.objectives import get_objective, validate_objective_params
from tuneforge.objectives.params import KdParams, SeqkdParams
from tuneforge.runs.layout import CONFIG_FILE, TOKENIZER_DIR
from tuneforge.runs.trained import RunTeacher, resolve_rewards


def read_recipe(loaded: LoadedConfig) -> Recipe:
    cfg = loaded.run
    method = get_method(cfg.method.name)
    method_params = validate_method_params(cfg.method, loaded.where("method"))
    objective = get_objective(cfg.objective.name)
    objective_params = validate_objective_params(cfg.objective, loaded.where("objective"))
    rewards = (resolve_rewards(objective_params, loaded.where("objective"), loaded.resolve_path)
               if objective.kind.online else [])
    if cfg.task not in objective.kind.tasks:
        wanted = "classify (or regress for regression)" if cfg.task != "causal_lm" else "a language-model objective"
        raise ConfigError(f"{loaded.where('objective')}: objective '{objective.name}' does not train task "
                          f"'{cfg.task}'\n  fix: use objective {wanted}, or set task to match")
    if cfg.train.packing and not method.supports_packing:
        raise ConfigError(f"{loaded.where('train', 'packing')}: method '{method.name}' prepends virtual tokens to "
                          "every sequence, so sequences cannot share a packed row\n  fix: set train.packing: false")
    teacher = (teacher_source(loaded, objective_params.teacher) if isinstance(objective_params, KdParams | SeqkdParams)
               else None)
    top_k = getattr(objective_params, "top_k", None)
    if teacher is not None and top_k and top_k > len(teacher.tokenizer):
        raise ConfigError(f"{loaded.where('objective', 'top_k')}: top_k {top_k} is more than the vocabulary's "
                          f"{len(teacher.tokenizer)} tokens\n  fix: remove top_k to compare over the whole vocabulary, "
                          "or give a smaller k (e.g. 32)")
    if cfg.data.streaming and top_k and getattr(objective_params, "cache", False):
        raise ConfigError(f"{loaded.where('objective', 'cache')}: a cached teacher computes its top-k over the whole "
                          "training data before training, and data.streaming never holds it\n  fix: set "
                          "objective.cache: false (the teacher runs live), or data.streaming: false")
    return Recipe(method, method_params, objective, objective_params, rewards, teacher)


def teacher_source(loaded: LoadedConfig, named: str) -> TeacherSource:
    """Where the objective's teacher is — a finished run, a model directory (relative to the config file, as
    model.path is), 'default' or a hub id — with its tokenizer, checked against the student's now, before any data
    or weights load."""
    from transformers import AutoTokenizer

    where = loaded.where("objective", "teacher")
    path = model_path_from(named, loaded.base_dir)
    if not Path(path).exists() and (named.startswith((".", "/", "~")) or named.count("/") > 1):
        raise ConfigError(f"{where}: {path} does not exist\n  fix: give a finished tuneforge run, a Hugging Face model "
                          "directory (relative to the config file), 'default' or a hub id")
    student = load_tokenizer(loaded.run.model)
    if (Path(path) / CONFIG_FILE).is_file():  # a tuneforge run: its model with what it trained
        source = RunTeacher(path, AutoTokenizer.from_pretrained(Path(path) / TOKENIZER_DIR), student)
    else:
        source = TeacherSource(path, load_tokenizer(ModelConfig(path=path)), student)
    return source.check(where, named, loaded.run.model.path)
