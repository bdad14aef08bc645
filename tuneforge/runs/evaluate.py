"""A finished run's scores on new data, by the evaluator its training used (`evaluate_run`; `tuneforge.api.evaluate`
adds a benchmark and lm-evaluation-harness), and a classifier's answers for people."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tuneforge.config import DatasetSpec
from tuneforge.data.dataset import encode_examples, load_examples
from tuneforge.data.kinds.labels import Labeled, encode_labeled
from tuneforge.data.render import use_chat_template
from tuneforge.engine.console import flat_scores
from tuneforge.engine.labelled import labelled_scores, predict
from tuneforge.engine.session import Prepared, Recipe, Session, make_evaluator
from tuneforge.evaluation import classification
from tuneforge.methods import get_method, validate_method_params
from tuneforge.objectives import get_objective, validate_objective_params
from tuneforge.objectives.base import Frozen
from tuneforge.runs.trained import TrainedRun, reference_of, resolve_rewards


@dataclass
class Evaluation:
    """A finished run's scores (nested: per task, per benchmark subject, per lm-eval task) and its answers."""

    scores: dict
    samples: list[dict]

    def flat(self) -> dict[str, float]:
        """The scores as one level (`task/metric`, `bench_subjects/NAME`), as the CLI prints them."""
        return flat_scores(self.scores)


def evaluate_run(trained: TrainedRun, data_path: str, metrics: list[str], *, batch_size: int = 16,
                 max_new_tokens: int = 64, max_examples: int | None = None) -> tuple[dict, list[dict]]:
    """A finished run's scores on a dataset file in any supported format, by the evaluator training used
    (`make_evaluator`): the objective's own held-out scores and the generation metrics asked for."""
    if trained.labels is not None:  # a classification run reports all of its task's metrics
        return evaluate_labelled_run(trained, data_path, batch_size=batch_size, max_examples=max_examples)
    cfg = trained.config.model_copy(deep=True)
    cfg.eval = cfg.eval.model_copy(update={"metrics": metrics, "batch_size": batch_size,
                                           "max_new_tokens": max_new_tokens})
    method, objective = get_method(cfg.method.name), get_objective(cfg.objective.name)
    records = load_examples([DatasetSpec(path=data_path)], seed=0)[:max_examples]
    objective.kind.check(records, objective.name)  # as training does: an SFT run is not scored on pairs or rated data
    test_raw = objective.kind.as_trained(records)
    test, _ = encode_examples(test_raw, trained.tokenizer, cfg.data, apply_drop_guard=False)
    prepared = Prepared([], test, test_raw, trained.tokenizer, use_chat_template(trained.tokenizer,
                                                                                 cfg.data.template), {})
    params = validate_objective_params(cfg.objective)
    rewards = resolve_rewards(params, "objective") if objective.kind.online else []
    recipe = Recipe(method, validate_method_params(cfg.method), objective, params, rewards)
    model = trained.model
    session = Session(recipe, model, next(model.parameters()).device, cfg.train.precision, trained.autocast,
                      trained.scoring, Frozen(reference_of(trained) if objective.needs_reference else None))
    return make_evaluator(session, prepared, cfg)(generate=True)


def evaluate_labelled_run(trained, data_path: str, *, batch_size: int = 32,
                          max_examples: int | None = None) -> tuple[dict, list[dict]]:
    """A finished classification run's scores on a labelled file (its labels checked against the run's)."""
    cfg = trained.config
    records = load_examples([DatasetSpec(path=data_path)], seed=0,
                            reader=labelled_reader(cfg))[:max_examples]
    trained.labels.check(records)
    examples, _ = encode_labeled(records, trained.tokenizer, trained.labels, cfg.data.max_seq_len)
    return labelled_scores(trained.model, examples, trained.labels, trained.tokenizer.pad_token_id, batch_size,
                           trained.autocast)


def labelled_reader(cfg):
    """How a classification run's records are read (its objective's kind)."""
    return get_objective(cfg.objective.name).kind.reader(cfg.task, cfg.data.label_names)


def describe_predictions(trained, texts: Sequence[str]) -> list[str]:
    """What a classification run says about each text, for people: the class and every class's probability,
    each word with its tag, or the predicted number."""
    labels = trained.labels
    if labels.task == "token_classification":
        records = [Labeled("chat", i, words=tuple(t.split()), tags=("O",) * len(t.split()))
                   for i, t in enumerate(texts)]
    else:
        records = [Labeled("chat", i, text=t, label=0.0 if labels.task == "regression" else labels.names[0])
                   for i, t in enumerate(texts)]
    examples, _ = encode_labeled(records, trained.tokenizer, labels, trained.config.data.max_seq_len)
    logits, _ = predict(trained.model, examples, trained.tokenizer.pad_token_id, autocast=trained.autocast)
    if labels.task == "regression":
        return [f"{float(x.reshape(-1)[0]):.4g}" for x in logits]
    if labels.task == "token_classification":
        return [" ".join(f"{w}/{t}" for w, t in zip(e.example.words, classification.word_tags(e, x, labels),
                                                     strict=True)) for e, x in zip(examples, logits, strict=True)]
    out = []
    for x in logits:
        probabilities = sorted(zip(labels.names, x.softmax(-1).tolist(), strict=True), key=lambda kv: -kv[1])
        out.append(f"{probabilities[0][0]}  (" + ", ".join(f"{n} {p:.3f}" for n, p in probabilities) + ")")
    return out
