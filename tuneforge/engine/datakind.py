"""Which records each objective trains on, checked before anything loads, and the records as the objective
sees them (KTO's rated completions gain their KL reference side)."""

from __future__ import annotations

from tuneforge.config import DatasetSpec, LoadedConfig
from tuneforge.data.dataset import load_examples
from tuneforge.data.formats import with_kl_completions
from tuneforge.errors import ConfigError, DataError
from tuneforge.objectives import Objective


def check_data_kind(examples, objective: Objective, loaded: LoadedConfig | None = None) -> None:
    """Each objective trains on its own kind of record (pairs, rated completions, prompts, or plain examples);
    a mismatch names its record. A rated record never trains as plain SFT data: its completion may be a
    bad one. A classification task's labelled records were read and checked by its own reader."""
    if objective.data == "labels":
        return
    if objective.data in ("prompts", "teacher_answers"):
        wrong = next((e for e in examples if e.is_pair or e.is_rated or e.prompt_and_reference() is None), None)
        if wrong is not None:
            why = ("samples completions of prompts, so each record needs a prompt (and its reference answer for the "
                   "rewards)" if objective.data == "prompts" else "trains on a teacher's answers to the prompts, so "
                   "each record needs a prompt (its answer is scored on the test data)")
            raise DataError(wrong.source, wrong.where, None, f"objective '{objective.name}' {why}",
                            "give records with prompt and completion (the reference), or messages ending in an "
                            "assistant turn")
        return
    if objective.data == "rated":
        _require_rated(examples, objective)
        labels = {e.desirable for e in examples}
        if len(labels) < 2:
            raise DataError(examples[0].source, "all records", "label", f"every label is {labels.pop()}; KTO "
                            "needs desirable and undesirable completions", "add records with the other label")
        return
    rated = next((e for e in examples if e.is_rated), None)
    if rated is not None:
        raise DataError(rated.source, rated.where, "label", f"this record is a rated completion (prompt/completion/"
                        f"label), and objective '{objective.name}' would train toward it whatever its label",
                        "use objective: kto, or drop the label (keep only good completions) for sft")
    wants_pairs = objective.data == "pairs"
    wrong = next((e for e in examples if e.is_pair != wants_pairs), None)
    if wrong is not None and wants_pairs:
        raise DataError(wrong.source, wrong.where, None, f"objective '{objective.name}' trains on preference pairs, "
                        "but this record is not one", "give records with prompt, chosen and rejected, or use "
                        "objective: sft")
    if wrong is not None:
        raise DataError(wrong.source, wrong.where, None, f"this record is a preference pair (prompt/chosen/rejected), "
                        f"but objective '{objective.name}' does not train on pairs",
                        "use a preference objective (objective: dpo, ipo, cdpo, simpo, orpo or reward)")
    if wants_pairs and loaded is not None and loaded.run.data.train_on_prompt:
        raise ConfigError(f"{loaded.where('data', 'train_on_prompt')}: data.train_on_prompt does not apply to "
                          "preference objectives (only the responses are compared)\n"
                          "  fix: remove data.train_on_prompt")


def load_splits(loaded: LoadedConfig, objective: Objective, notes: list[str]) -> dict[str, list]:
    """Every record of the train (and test) data read and checked against what the objective trains on, as
    the objective sees them; no tokenizer or model is needed. Warnings (skipped records, keys nothing reads)
    are appended to `notes`. `tuneforge train` and `tuneforge data check` read data through here."""
    cfg = loaded.run
    return read_splits(loaded, objective, notes, {"train": cfg.data.train, "test": cfg.data.test or []})


def read_splits(loaded: LoadedConfig, objective: Objective, notes: list[str],
                specs: dict[str, list[DatasetSpec]]) -> dict[str, list]:
    """`load_splits` for the datasets named (a federated server reads only the test data; a client its own)."""
    cfg = loaded.run
    mixture = {"sampling": cfg.data.sampling, "temperature": cfg.data.temperature}  # training data only
    splits = {split: load_examples(entries, cfg.train.seed, loaded.resolve_path, bad_records=cfg.data.bad_records,
                                   notes=notes, task=cfg.task, label_names=cfg.data.label_names,
                                   **(mixture if split == "train" else {}))
              for split, entries in specs.items() if entries}
    check_data_kind([e for examples in splits.values() for e in examples], objective, loaded)
    return {split: objective_examples(examples, objective) for split, examples in splits.items()}


def objective_examples(examples: list, objective: Objective) -> list:
    """The records as the objective trains them: KTO's rated completions gain their KL reference side."""
    if objective.data != "rated":
        return examples
    _require_rated(examples, objective)
    return with_kl_completions(examples)


def _require_rated(examples: list, objective: Objective) -> None:
    wrong = next((e for e in examples if not e.is_rated), None)
    if wrong is not None:
        raise DataError(wrong.source, wrong.where, None, f"objective '{objective.name}' trains on rated "
                        "completions, but this record has no label", "give records with prompt, completion "
                        "and label (true for a desirable completion, false for an undesirable one)")
