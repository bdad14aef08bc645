"""The kinds of training record, one module each (sft, pairs, rated, prompts, teacher_answers, labels): an
objective names its kind (`Objective.data`) and the engine asks the kind — how records are read and checked,
what the objective trains on, how they are tokenized and batched, what the held-out evaluation needs — never
switching on its name. A new kind is one module with a `KIND` and one line in `KINDS`.

`load_splits` reads a config's data through its objective's kind: `tuneforge train` and `tuneforge data check`
read data here, before any tokenizer or model loads."""

from __future__ import annotations

from tuneforge.config import DatasetSpec, LoadedConfig, registry_lookup
from tuneforge.data.dataset import load_examples
from tuneforge.data.kinds import labels, pairs, prompts, rated, sft, teacher_answers
from tuneforge.data.kinds.base import DataKind, EncodedSplits, SplitReport
from tuneforge.errors import ConfigError

__all__ = ["KINDS", "DataKind", "EncodedSplits", "SplitReport", "get_kind", "load_splits", "read_splits"]

KINDS: dict[str, DataKind] = {kind.name: kind for kind in (sft.KIND, pairs.KIND, rated.KIND, prompts.KIND,
                                                            teacher_answers.KIND, labels.KIND)}


def get_kind(name: str) -> DataKind:
    return registry_lookup(KINDS, name, "data kind")


def load_splits(loaded: LoadedConfig, objective, notes: list[str]) -> dict[str, list]:
    """Every record of the train (and test) data, read and checked by the objective's kind and as the objective
    trains them; no tokenizer or model is needed. Warnings (skipped records, keys nothing reads) are appended to
    `notes`."""
    cfg = loaded.run
    if not cfg.data.train:
        raise ConfigError(f"{loaded.where('data')}: missing required key 'data.train'\n  fix: add the training data, "
                          "e.g. data: {train: train.jsonl}")
    return read_splits(loaded, objective, notes, {"train": cfg.data.train, "test": cfg.data.test or []})


def read_splits(loaded: LoadedConfig, objective, notes: list[str], specs: dict[str, list[DatasetSpec]]
                ) -> dict[str, list]:
    """`load_splits` for the datasets named (a federated server reads only the test data; a client its own)."""
    cfg, kind = loaded.run, get_kind(objective.data)
    mixture = {"sampling": cfg.data.sampling, "temperature": cfg.data.temperature}  # training data only
    reader = kind.reader(cfg.task, cfg.data.label_names)
    splits = {split: load_examples(entries, cfg.train.seed, loaded.resolve_path, bad_records=cfg.data.bad_records,
                                   notes=notes, reader=reader, **(mixture if split == "train" else {}))
              for split, entries in specs.items() if entries}
    kind.check([e for examples in splits.values() for e in examples], objective.name, loaded)
    return {split: kind.as_trained(examples) for split, examples in splits.items()}
