"""The schema of a run: one YAML file plus `key=value` overrides, validated before anything is loaded.

Every section forbids unknown keys; an error names the config file and line, the key path and the
closest valid name. Method and objective parameters are validated by their own registries (each method
module owns its parameter schema), so `method` and `objective` keep only their `name` here.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tuneforge.errors import ConfigError

# whole key names such as hub_token, api_key, password — not counts such as max_new_tokens
SECRET_KEY_PATTERN = re.compile(r"(^|_)(token|secret|password|api_?key|credentials?)$", re.IGNORECASE)
REDACTED = "***redacted***"
T = TypeVar("T")
IGNORE_INDEX = -100  # label value of a token that is not trained (torch cross_entropy's ignore_index)


class Strict(BaseModel):
    # inf and nan are never a usable setting (an infinite learning rate or epoch count): refused with the key
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelConfig(Strict):
    path: str = Field("default", description="'default', a local Hugging Face model directory, or a hub id")
    trust_remote_code: bool = False
    revision: str | None = None
    hidden_dropout: float | None = Field(None, ge=0, lt=1, description="override the model's dropout on hidden "
                                         "states (BERT's hidden_dropout_prob and the like); None keeps its own")
    attention_dropout: float | None = Field(None, ge=0, lt=1, description="override the model's dropout on "
                                            "attention probabilities; None keeps its own")


class NamedParams(BaseModel):
    """A registry name plus that entry's parameters, validated later by the registry's own schema."""

    model_config = ConfigDict(extra="allow")
    name: str

    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


RecordFormat = Literal["auto", "messages", "sharegpt", "prompt_completion", "alpaca", "text", "preference", "rated",
                       "oasst"]


class DatasetSpec(Strict):
    """One dataset of data.train or data.test (a path alone is `{path: PATH}`)."""

    path: str = Field(description="file (.jsonl .json .csv .parquet, or .gz of the first three), a `save_to_disk` "
                      "directory, or quickstart:NAME")
    weight: float = Field(1.0, gt=0, description="size multiplier in a mixture: 2 repeats, 0.5 samples half")
    format: RecordFormat = "auto"
    split: str | None = Field(None, description="split of a saved DatasetDict")
    columns: dict[str, str] = Field(default_factory=dict, description="the file's names for tuneforge's fields, "
                                    "e.g. {prompt: question, completion: answer}")
    tree: Literal["best", "all", "pairs"] = Field("best", description="message trees (OpenAssistant rows or trees): "
                                                  "the best-ranked reply at each turn, every path, or preference "
                                                  "pairs of ranked replies")
    task: str | None = Field(None, min_length=1, max_length=64,
                             description="the task this dataset belongs to: train entries are sampled by task "
                             "(data.sampling), test entries are scored per task")

    @field_validator("task")
    @classmethod
    def _task_is_a_folder_name(cls, name: str | None) -> str | None:
        if name is not None and not re.fullmatch(r"[\w-][\w.-]*", name):  # never '.', '..' or a hidden folder
            raise ValueError("a task name is also a folder name: letters, digits, '_', '-' and '.', not first")
        return name


def dataset_list(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, str | dict):
        value = [value]
    if isinstance(value, list):
        return [{"path": v} if isinstance(v, str) else v for v in value]
    return value


class DataConfig(Strict):
    train: list[DatasetSpec] = Field(default_factory=list, description="the training data (required, except by a "
                                     "federation whose clients bring their own)")
    test: list[DatasetSpec] | None = None
    template: Literal["auto", "chat", "plain"] = "auto"
    max_seq_len: int = Field(1024, ge=8)
    overlong: Literal["truncate", "drop", "error"] = "truncate"
    max_drop_fraction: float = Field(0.01, ge=0, le=1)
    train_on_prompt: bool = False
    bad_records: Literal["error", "skip"] = Field("error", description="a record that cannot be read or is "
                                                  "malformed: stop (default), or skip it and report how many")
    sampling: Literal["proportional", "uniform", "temperature"] = Field(
        "proportional", description="how train entries with a task share the data: by their size, equally, or "
        "size^(1/temperature) (T = 1 is proportional, a large T tends to uniform)")
    temperature: float = Field(2.0, gt=0, le=1000, description="T of data.sampling: temperature")
    cache: bool = Field(True, description="keep tokenized data under $TUNEFORGE_HOME/cache; reruns skip tokenizing")
    label_names: list[str] | None = Field(None, min_length=2, description="classification tasks: the class "
                                          "names in index order, for data whose labels (or tags) are integers; "
                                          "also fixes the label set instead of reading it from the training data")
    test_fraction: float | None = Field(None, gt=0, lt=1, description="hold out this fraction of the training "
                                        "records as the test set (seeded), instead of data.test")
    stratify: bool = Field(False, description="with data.test_fraction: keep each class's share on both sides "
                           "(sequence_classification)")
    streaming: bool = Field(False, description="read data.train a block at a time as it trains, never whole: data "
                            "larger than memory (.jsonl, .csv, .tsv, .parquet; train.max_steps says how long)")
    shuffle_buffer: int = Field(10_000, ge=1, le=10_000_000, description="data.streaming: records per block; "
                                "each block's records are shuffled (seeded) among themselves")

    _lists = field_validator("train", "test", mode="before")(dataset_list)


class TrainConfig(Strict):
    epochs: float = Field(1.0, gt=0, le=10_000, description="passes over the data (a fraction is allowed)")
    max_steps: int | None = Field(None, ge=1, le=10**9, description="overrides epochs when set")
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(2e-4, gt=0)
    schedule: Literal["cosine", "linear", "constant", "plateau", "range_test"] = Field(
        "cosine", description="plateau: constant, multiplied by train.plateau_factor whenever the monitored "
        "evaluation (train.early_stopping_metric) has not improved for train.plateau_patience evaluations; "
        "range_test: rising exponentially from train.lr_start to train.lr over the steps (`tuneforge lr-find`)")
    lr_start: float = Field(1e-7, gt=0, description="the range test's first rate (schedule: range_test)")
    plateau_factor: float = Field(0.5, gt=0, lt=1)
    plateau_patience: int = Field(1, ge=1)
    layer_lr_decay: float | None = Field(None, gt=0, le=1, description="layer-wise learning-rate decay (LLRD): "
                                         "the top layer and the head train at train.lr, each layer below at this "
                                         "factor times the one above, the embeddings last")
    warmup_steps: int = Field(0, ge=0)
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    adam_beta1: float = Field(0.9, ge=0, lt=1)
    adam_beta2: float = Field(0.999, ge=0, lt=1)
    adam_eps: float = Field(1e-8, gt=0)
    max_grad_norm: float | None = Field(1.0, gt=0)
    nonfinite: Literal["skip", "stop"] = Field("skip", description="a step whose loss or gradient is NaN or inf: "
                                               "skip it (weights unchanged, logged) or stop the run")
    seed: int = Field(42, ge=0, le=2**32 - 1, description="seeds every random choice (NumPy's range)")
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    gradient_checkpointing: bool = Field(False, description="recompute activations in backward: less memory, "
                                         "about a third more compute")
    packing: bool = Field(False, description="pack each micro-batch's examples into fewer rows without "
                          "cross-example attention (same loss, less padding)")
    shuffle: bool = Field(True, description="shuffle each epoch (seeded); false keeps the dataset order")
    group_by_length: bool = True
    log_every: int = Field(1, ge=1)
    eval_every: int = Field(0, ge=0, description="steps between held-out loss evaluations; 0 = only at the end")
    early_stopping_patience: int | None = Field(None, ge=1, description="evaluations without improvement")
    early_stopping_metric: str = Field("loss", description="what periodic evaluations watch (early stopping, "
                                       "the plateau schedule): loss, or any metric the task reports (accuracy, "
                                       "f1, exact_match, ...); higher is better except for loss and mse")
    save_every: int = Field(0, ge=0, description="steps between checkpoints; 0 = no intermediate checkpoints")
    keep_last: int = Field(2, ge=1)
    distributed: Literal["ddp", "fsdp"] = Field("ddp", description="several processes (--nproc, torchrun): "
                                                "ddp keeps a whole model in each; fsdp (FSDP2) shards weights, "
                                                "gradients and optimizer state across them")
    collective_timeout_s: int = Field(60, ge=5, le=3600, description="several processes (--nproc, torchrun): "
                                      "a gradient exchange a process does not answer within this time stops the "
                                      "run with an error naming the step")


GenerationMetric = Literal["exact_match", "contains", "rouge", "bleu"]
Metric = Literal["loss", "exact_match", "contains", "rouge", "bleu", "accuracy", "f1", "f1_micro", "precision",
                 "recall", "mse", "pearson"]
Task = Literal["causal_lm", "sequence_classification", "token_classification", "regression"]
# what each task's evaluation reports (a classification run reports all of them, and per class)
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "causal_lm": ("loss", "exact_match", "contains", "rouge", "bleu"),
    "sequence_classification": ("loss", "accuracy", "f1", "f1_micro", "precision", "recall"),
    "token_classification": ("loss", "accuracy", "f1", "precision", "recall"),
    "regression": ("loss", "mse", "pearson"),
}
LOWER_IS_BETTER = ("loss", "mse")


class BenchConfig(Strict):
    """A multiple-choice benchmark scored at the evaluations before and after training (`bench_acc`, ...)."""

    data: str = Field(description="a file in MMLU's layout (question, choices, answer, subject?, split?; MMLU's own "
                      "headerless CSVs, ARC's and HellaSwag's rows read too), or quickstart:mc")
    shots: int = Field(5, ge=0, description="few-shot examples from the file's 'dev' records of the same subject")
    style: Literal["letters", "choices"] = Field("letters", description="letters: choices listed, ' A' scored "
                                                  "(MMLU); choices: each choice's text scored (ARC, HellaSwag)")
    columns: dict[str, str] = Field(default_factory=dict, description="the file's names for question, choices, "
                                    "answer, subject and split, e.g. {question: stem, choices: options}")


class EvalConfig(Strict):
    metrics: list[Metric] | None = Field(None, description="default: loss and exact_match for causal_lm; a "
                                         "classification task reports all of its own")
    bench: BenchConfig | None = None
    compare_base: bool = False
    max_new_tokens: int = Field(64, ge=1)
    batch_size: int = Field(16, ge=1)
    max_examples: int | None = Field(None, ge=1)

    @field_validator("metrics", mode="before")
    @classmethod
    def _split_string(cls, value: Any) -> Any:
        return [m.strip() for m in value.split(",") if m.strip()] if isinstance(value, str) else value


def parse_metrics(text: str, where: str, task: str = "causal_lm") -> list[str]:
    """A comma list of metric names (the command line's --metrics), each checked against what `task` reports."""
    names = [m.strip() for m in text.split(",") if m.strip()]
    valid = list(TASK_METRICS[task])
    for name in names:
        if name not in valid:
            hint = closest_name(name, valid)
            what = "unknown metric" if name not in Metric.__args__ else f"a metric task {task} does not report:"
            raise ConfigError(f"{where}: {what} {name!r}\n  fix: " + (f"did you mean '{hint}'? " if hint
                              else "") + f"choose from {', '.join(valid)}")
    if not names:
        raise ConfigError(f"{where}: no metric given\n  fix: choose from {', '.join(valid)}")
    return names


Tracker = Literal["tensorboard", "mlflow", "wandb"]


class OutputConfig(Strict):
    dir: str | None = Field(None, description="run directory; default runs/<config file name>")
    tensorboard: bool = Field(True, description="shorthand: false leaves tensorboard out of the default trackers")
    trackers: list[Tracker] | None = Field(
        None, description="where the metrics go besides metrics.jsonl: tensorboard (<run>/tensorboard), mlflow (a "
                          "local store in <run>/mlflow, or the server MLFLOW_TRACKING_URI names); default "
                          "[tensorboard]")
    overwrite: bool = False

    @property
    def chosen_trackers(self) -> list[str]:
        if self.trackers is not None:
            return list(dict.fromkeys(self.trackers))
        return ["tensorboard"] if self.tensorboard else []


class Dimension(Strict):
    """One searched config key: a range, or choices; `when` makes it conditional on other keys' values."""

    low: float | None = Field(None, description="the range's lower end")
    high: float | None = Field(None, description="the range's upper end")
    log: bool = Field(False, description="log-uniform (a learning rate)")
    step: float | None = Field(None, gt=0, description="on a grid of this step from low")
    integer: bool = Field(False, description="draw whole numbers from [low, high]")
    choices: list[Any] | None = Field(None, min_length=1, description="the values to choose from (any YAML values)")
    when: dict[str, list[Any]] = Field(default_factory=dict, description="key: values under which this key is "
                                       "searched (the keys are the config's, sampled or set)")

    @model_validator(mode="after")
    def _distribution(self) -> Dimension:
        if self.choices is not None:
            if self.low is not None or self.high is not None or self.log or self.step is not None or self.integer:
                raise ValueError("give either choices or a range (low, high, log, step, integer), not both")
            return self
        if self.low is None or self.high is None:
            raise ValueError("a range needs low and high (or give choices: [...])")
        if not self.low < self.high:
            raise ValueError(f"an empty range: low {self.low} is not below high {self.high}")
        if self.log and (self.low <= 0 or self.step is not None):
            raise ValueError("a log range needs low > 0 and no step")
        if self.integer and not (float(self.low).is_integer() and float(self.high).is_integer()):
            raise ValueError("an integer range needs whole low and high")
        return self


class SweepTarget(Strict):
    """What a sweep optimises: a score or a cost, and which way."""

    metric: str = Field(description="a held-out score of the trials' runs (loss, exact_match, TASK/loss ...) or a "
                        "cost: tokens_per_s, peak_memory_gib, trainable_parameters, wall_s")
    direction: Literal["minimize", "maximize"] = Field(description="minimize (loss, memory) or maximize")


class SweepConfig(Strict):
    """`tuneforge sweep`: the search over this config (ignored by `tuneforge train`, which trains the config as
    written: the hand-set defaults)."""

    space: dict[str, Dimension] = Field(min_length=1, description="config key (train.lr, method.r, method.name, "
                                        "objective.beta ...): its range or choices")
    objectives: list[SweepTarget] = Field(default_factory=lambda: [SweepTarget(metric="loss",
                                          direction="minimize")], min_length=1, max_length=4,
                                          description="one: the best trial; several: a Pareto front")
    trials: int | None = Field(20, ge=1, description="trials to finish (complete, pruned or failed)")
    timeout_s: float | None = Field(None, gt=0, description="wall-clock budget: no trial starts after it")
    sampler: Literal["tpe", "random", "grid", "cmaes"] = Field("tpe", description="Optuna's sampler: TPE "
                                                               "(multivariate; random for its first third of the "
                                                               "trials, 3 to 10), random, grid (every combination), "
                                                               "CMA-ES")
    pruner: Literal["none", "median", "hyperband", "successive_halving"] = Field(
        "median", description="stops unpromising trials at their evaluations (single-objective sweeps); a NaN or "
        "diverging score stops a trial in every sweep")
    diverge: float | None = Field(None, description="a reported score past this (above when minimising, below "
                                  "when maximising) stops the trial at once")
    reports: int = Field(4, ge=1, le=1000, description="evaluations per trial the pruner sees, where the config "
                         "sets no train.eval_every")
    seed: int = Field(0, description="the sampler's seed")


class RunConfig(Strict):
    task: Task = Field("causal_lm", description="what the model predicts: the next token (causal_lm), a class "
                       "per text, a tag per word, or a number per text; chooses the model's head, the data "
                       "layout, the loss and the metrics")
    model: ModelConfig = Field(default_factory=ModelConfig, description="the pretrained model (a path alone is "
                               "`model: PATH`)")
    method: NamedParams = Field(default_factory=lambda: NamedParams(name="lora"), description="what is trained: "
                                "`method: NAME` or `{name: NAME, ...its parameters}` (default lora; the methods "
                                "and their parameters are below)")
    objective: NamedParams = Field(default_factory=lambda: NamedParams(name="sft"), description="what is optimised: "
                                   "`objective: NAME` or `{name: NAME, ...}` (default sft; classify or regress for "
                                   "those tasks; below)")
    strategy: NamedParams = Field(default_factory=lambda: NamedParams(name="single"), description="what is trained "
                                  "when: `strategy: NAME` or `{name: NAME, ...}` (default single; below)")
    data: DataConfig = Field(description="the training and test data (a path alone is `train: PATH`)")
    train: TrainConfig = Field(default_factory=TrainConfig, description="how the phase trains")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="what is scored before, during and after "
                             "training")
    output: OutputConfig = Field(default_factory=OutputConfig, description="where the run directory goes and where "
                                 "its metrics are sent")
    sweep: SweepConfig | None = Field(None, description="a hyperparameter search over this config "
                                      "(`tuneforge sweep`)")

    @model_validator(mode="before")
    @classmethod
    def _shorthands(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        raw = dict(raw)
        if isinstance(raw.get("model"), str):
            raw["model"] = {"path": raw["model"]}
        for key in ("method", "objective", "strategy"):
            if isinstance(raw.get(key), str):
                raw[key] = {"name": raw[key]}
        if raw.get("task") in TASK_METRICS and raw["task"] != "causal_lm" and "objective" not in raw:
            raw["objective"] = {"name": "regress" if raw["task"] == "regression" else "classify"}
        return raw

    @model_validator(mode="after")
    def _task_metrics(self) -> RunConfig:
        if self.eval.bench and self.task != "causal_lm":
            raise ValueError("eval.bench scores a language model's answers; a classification run has none\n  fix: "
                             "remove eval.bench")
        if self.eval.metrics is None:
            self.eval.metrics = ["loss", "exact_match"] if self.task == "causal_lm" else list(TASK_METRICS[self.task])
        return self


class LoadedConfig(BaseModel):
    """A validated run config plus where it came from (for error messages and relative paths)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    run: RunConfig
    source: Path | None
    base_dir: Path
    lines: dict[tuple[str, ...], int] = Field(default_factory=dict)

    def where(self, *key: str) -> str:
        """'file:line' (or the key path alone) for a config key, for error messages."""
        line = self.lines.get(tuple(key))
        dotted = ".".join(key)
        if self.source is None:
            return f"config key '{dotted}'"
        return f"{self.source}:{line} ('{dotted}')" if line else f"{self.source} ('{dotted}')"

    def resolve_path(self, value: str) -> str:
        """Resolve a dataset or model path relative to the config file's directory."""
        if ":" in value.split("/")[0] or Path(value).is_absolute():
            return value
        candidate = self.base_dir / value
        return str(candidate)


def tuneforge_home() -> Path:
    """Where tuneforge keeps converted models and caches: $TUNEFORGE_HOME, default ~/.cache/tuneforge."""
    return Path(os.environ.get("TUNEFORGE_HOME") or Path.home() / ".cache" / "tuneforge")


def load_config(source: str | Path | dict, overrides: Sequence[str] = ()) -> LoadedConfig:
    """Read a YAML file (or a dict), apply `a.b=value` overrides, validate. Raises ConfigError."""
    if isinstance(source, dict):
        raw, lines, path, base = dict(source), {}, None, Path.cwd()
    else:
        path = Path(source)
        raw, lines = _read_yaml(path)
        base = path.resolve().parent
    for override in overrides:
        _apply_override(raw, override)
    try:
        run = RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe_validation_error(exc, path, lines, overrides)) from None
    run.model.path = model_path_from(run.model.path, base)
    loaded = LoadedConfig(run=run, source=path, base_dir=base, lines=lines)
    check_task_metrics(loaded)
    check_streaming(loaded)
    if run.task != "causal_lm" and run.model.path == DEFAULT_MODEL:
        run.model.path = DEFAULT_ENCODER  # the default of a classification task is the default encoder
    return loaded


def check_task_metrics(loaded: LoadedConfig) -> None:
    """The metrics a config names are ones its task reports."""
    run = loaded.run
    valid = TASK_METRICS[run.task]
    wrong = [m for m in run.eval.metrics or () if m not in valid]
    if wrong:
        raise ConfigError(f"{loaded.where('eval', 'metrics')}: {wrong} do not apply to task {run.task}\n  fix: "
                          f"choose from {', '.join(valid)}")
    watched = run.train.early_stopping_metric
    if watched not in (*valid, "reward"):
        hint = closest_name(watched, valid)
        raise ConfigError(f"{loaded.where('train', 'early_stopping_metric')}: {watched!r} is not a metric of task "
                          f"{run.task}\n  fix: " + (f"did you mean '{hint}'? " if hint else "")
                          + f"choose from {', '.join(valid)}")


def check_streaming(loaded: LoadedConfig) -> None:
    """`data.streaming` reads the training files once through, in order: what needs them whole is refused."""
    data, where = loaded.run.data, loaded.where("data", "streaming")
    if not data.streaming:
        return
    if loaded.run.train.max_steps is None:
        raise ConfigError(f"{where}: a streamed dataset's size is not known until it is read, so the epochs cannot "
                          "say how long to train\n  fix: set train.max_steps")
    mixed = next((spec for spec in data.train if spec.weight != 1.0 or spec.task), None)
    if mixed is not None:
        raise ConfigError(f"{where}: data.train entry {mixed.path} has a {'weight' if mixed.weight != 1.0 else 'task'}"
                          "; a mixture's shares need every file's size, and a stream reads the files one after "
                          "another\n  fix: mix the files beforehand (one shuffled file), or set data.streaming: false")
    if data.test_fraction is not None:
        raise ConfigError(f"{where}: data.test_fraction holds out records chosen from the whole training data, "
                          "which a stream never holds\n  fix: give data.test, or set data.streaming: false")


DEFAULT_MODEL, DEFAULT_ENCODER = "default", "default-encoder"


def model_path_from(value: str, base: Path) -> str:
    """A relative model path, like a data path, is relative to the config file's directory: `./x` and `../x`
    always, any other relative path when it exists there (otherwise it is a hub id such as org/name)."""
    if value in (DEFAULT_MODEL, DEFAULT_ENCODER) or Path(value).expanduser().is_absolute() or value.startswith("~"):
        return value
    candidate = base / value
    return str(candidate) if value.startswith(("./", "../")) or candidate.exists() else value


MAX_CONFIG_BYTES = 1 << 20  # a run config is a page or two; anything near this is not one
MAX_CONFIG_NODES = 100_000  # values in the config once YAML aliases are expanded


def _read_yaml(path: Path) -> tuple[dict, dict[tuple[str, ...], int]]:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found\n  fix: pass the path of a YAML run config, e.g. "
                          "examples/quickstart.yaml")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: {path.stat().st_size} bytes is not a run config (the limit is "
                          f"{MAX_CONFIG_BYTES})\n  fix: pass the YAML run config, e.g. examples/quickstart.yaml")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte {exc.start} is not UTF-8)\n  fix: pass the YAML "
                          "run config, saved as UTF-8") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        _refuse_alias_bombs(node, path)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML: {getattr(exc, 'problem', None) or exc}\n  fix: correct the YAML "
                          "syntax at that line") from None
    except RecursionError:
        raise ConfigError(f"{path}: the YAML is nested too deeply to be a run config\n  fix: pass the YAML run "
                          "config, e.g. examples/quickstart.yaml") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}:1: a run config must be a mapping of sections (model, method, data, ...)\n"
                          "  fix: see examples/quickstart.yaml for the layout")
    lines: dict[tuple[str, ...], int] = {}
    _collect_lines(node, (), lines)
    return raw, lines


def _refuse_alias_bombs(node: Any, path: Path) -> None:
    """YAML aliases can make a 1 KB file stand for billions of values; count the values with every alias
    expanded (each node's count once, so this takes time linear in the file) and refuse more than a config
    could need."""
    sizes: dict[int, int] = {}

    def size(item: Any) -> int:
        if id(item) not in sizes:
            sizes[id(item)] = 1  # a node that contains itself counts once
            children = item.value if isinstance(item.value, list) else []
            flat = [part for child in children for part in (child if isinstance(child, tuple) else (child,))]
            sizes[id(item)] = 1 + sum(size(child) for child in flat)
        return sizes[id(item)]

    if node is not None and size(node) > MAX_CONFIG_NODES:
        raise ConfigError(f"{path}: with its YAML aliases expanded the config holds over {MAX_CONFIG_NODES:,} "
                          "values, far more than a run config has\n  fix: write the values out instead of "
                          "nesting aliases of aliases")


def _collect_lines(node: Any, prefix: tuple[str, ...], out: dict[tuple[str, ...], int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = (*prefix, str(key_node.value))
            out[key] = key_node.start_mark.line + 1
            _collect_lines(value_node, key, out)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            key = (*prefix, str(index))
            out[key] = item.start_mark.line + 1
            _collect_lines(item, key, out)


def _apply_override(raw: dict, override: str) -> None:
    if "=" not in override:
        raise ConfigError(f"override '{override}' is not of the form key.path=value\n"
                          "  fix: write e.g. train.lr=1e-4 or method.r=16")
    dotted, _, text = override.partition("=")
    keys = [k for k in dotted.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"override '{override}' has an empty key\n  fix: write e.g. train.lr=1e-4")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    node = raw
    for depth, key in enumerate(keys[:-1]):
        child = node.get(key)
        if isinstance(child, str) and depth == 0 and key in ("method", "objective", "strategy"):
            child = {"name": child}
        elif isinstance(child, str) and depth == 0 and key == "model":
            child = {"path": child}
        elif child is None:
            child = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"override '{override}': '{'.'.join(keys[: depth + 1])}' is not a section\n"
                              "  fix: override the whole value instead, e.g. "
                              f"{'.'.join(keys[: depth + 1])}=...")
        node[key] = child
        node = child
    node[keys[-1]] = value


def _describe_validation_error(exc: ValidationError, path: Path | None, lines: dict,
                               overrides: Sequence[str] = ()) -> str:
    messages = []
    for err in exc.errors():
        loc = tuple(str(part) for part in err["loc"] if not str(part).startswith("function-"))
        loc = tuple(p for p in loc if p not in ("list[DatasetSpec]", "str", "dict[any,any]"))
        dotted = ".".join(loc) or "(top level)"
        line = _nearest_line(loc, lines)
        where = f"{path}:{line}" if path and line else (str(path) if path else "config")
        from_override = [o for o in overrides if o.partition("=")[0].strip() == dotted]
        if from_override:
            where = f"override '{from_override[-1]}'"

        if err["type"] == "extra_forbidden":
            hint = _closest_field(loc)
            fix = f"did you mean '{hint}'?" if hint else "remove it; see the documented keys in README.md"
            messages.append(f"{where}: unknown key '{dotted}'\n  fix: {fix}")
        elif err["type"] == "missing":
            messages.append(f"{where}: missing required key '{dotted}'\n  fix: add it to the config")
        else:
            got = err.get("input")
            shown = repr(got) if not isinstance(got, dict | list) else type(got).__name__
            messages.append(f"{where}: '{dotted}' = {shown}: {err['msg']}\n  fix: give a valid value for "
                            f"'{dotted}'")
    return "\n".join(messages)


def validation_message(exc: ValidationError) -> str:
    """A schema error of a config built in code (a sweep's trial): each key, what is wrong, the fix."""
    return _describe_validation_error(exc, None, {}).replace("config: ", "")


def _nearest_line(loc: tuple[str, ...], lines: dict) -> int | None:
    for end in range(len(loc), 0, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None


def _closest_field(loc: tuple[str, ...]) -> str | None:
    """The valid key closest to the unknown last element of `loc`, within the section it appeared in."""
    model: type[BaseModel] | None = RunConfig
    for part in loc[:-1]:
        if model is None:
            return None
        if part.isdigit():
            continue
        field = model.model_fields.get(part)
        model = _model_of(field.annotation) if field else None
    if model is None:
        return None
    match = difflib.get_close_matches(loc[-1], list(model.model_fields), n=1, cutoff=0.5)
    return ".".join((*loc[:-1], match[0])) if match else None


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_of(arg)
        if found:
            return found
    return None


# the names users bring from transformers, peft and TRL configs
KNOWN_ALIASES = {"rank": "r", "lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout",
                 "learning_rate": "lr", "per_device_train_batch_size": "batch_size",
                 "gradient_accumulation_steps": "grad_accum", "num_train_epochs": "epochs",
                 "lr_scheduler_type": "schedule", "max_length": "max_seq_len", "use_dora": "dora",
                 "use_rslora": "rslora", "output_dir": "dir"}


def closest_name(name: str, choices: Sequence[str]) -> str | None:
    """The valid name the user most likely meant: a known alias from other tools, else the closest spelling."""
    alias = KNOWN_ALIASES.get(name.rsplit(".", 1)[-1])
    if alias in choices:
        return alias
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.4)
    return match[0] if match else None


def registry_lookup(registry: Mapping[str, T], name: str, section: str) -> T:
    """registry[name], or a ConfigError naming the config key, the closest name and the choices."""
    if name in registry:
        return registry[name]
    hint = closest_name(name, list(registry))
    raise ConfigError(f"unknown {section} '{name}' (config key '{section}.name')\n  fix: "
                      + (f"did you mean '{hint}'? " if hint else "") + f"available: {', '.join(sorted(registry))}")


def redacted(value: Any) -> Any:
    """A copy of a config dump with any secret-looking key's value replaced."""
    if isinstance(value, dict):
        return {k: (REDACTED if SECRET_KEY_PATTERN.search(str(k)) and v else redacted(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [redacted(v) for v in value]
    return value


def dump_yaml(run: RunConfig) -> str:
    """The resolved config as YAML, with secrets redacted, as written to the run directory."""
    data = run.model_dump(mode="json")
    for key in ("method", "objective", "strategy"):
        data[key] = {"name": data[key]["name"], **getattr(run, key).params()}
    return yaml.safe_dump(redacted(data), sort_keys=False)


def validate_named_params(schema: type[BaseModel], spec: NamedParams, key: str, where: str) -> BaseModel:
    """Validate a registry entry's own parameters under config key `key` (e.g. 'method'); an unknown key fails
    with the closest valid name."""
    try:
        return schema.model_validate(spec.params())
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            name = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                hint = closest_name(name, list(schema.model_fields))
                fix = f"did you mean '{key}.{hint}'?" if hint else \
                    f"valid keys for {spec.name}: {', '.join(schema.model_fields) or '(none)'}"
                lines.append(f"{where}: unknown key '{key}.{name}' for {key} '{spec.name}'\n  fix: {fix}")
            elif not name:  # a check across keys: its message says which and the fix
                lines.append(f"{where}: {key} '{spec.name}': {err['msg'].removeprefix('Value error, ')}")
            else:
                lines.append(f"{where}: '{key}.{name}' = {err.get('input')!r}: {err['msg']}\n"
                             f"  fix: give a valid value for '{key}.{name}'")
        raise ConfigError("\n".join(lines)) from None
