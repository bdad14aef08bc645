"""The kinds of training record, one module each (sft, pairs, rated, prompts, teacher_answers, labels, episodes): an
objective names its kind (`Objective.data`) and the engine asks the kind — how records are read and checked,
what the objective trains on, how they are tokenized and batched, what the held-out evaluation needs — never
switching on its name. A new kind is one module with a `KIND` and one line in `KINDS`.

`load_splits` reads a config's data through its objective's kind: `tuneforge train` and `tuneforge data check`
read data here, before any tokenizer or model loads."""

from __future__ import annotations

from pathlib import Path

from tuneforge.config import DatasetSpec, LoadedConfig, registry_lookup
from tuneforge.data.dataset import load_examples
from tuneforge.data.kinds import episodes, labels, pairs, prompts, rated, sft, teacher_answers
from tuneforge.data.kinds.base import DataKind, EncodedSplits, SplitReport
from tuneforge.data.stream import HUGE_BYTES, RecordStream
from tuneforge.errors import ConfigError

__all__ = ["KINDS", "DataKind", "EncodedSplits", "SplitReport", "get_kind", "load_splits", "read_splits"]

KINDS: dict[str, DataKind] = {kind.name: kind for kind in (sft.KIND, pairs.KIND, rated.KIND, prompts.KIND,
                                                            teacher_answers.KIND, labels.KIND, episodes.KIND)}


def get_kind(name: str) -> DataKind:
    return registry_lookup(KINDS, name, "data kind")


def load_splits(loaded: LoadedConfig, objective, notes: list[str], *, sample: bool = False
                ) -> dict[str, list | RecordStream]:
    """Every record of the train (and test) data, read and checked by the objective's kind and as the objective
    trains them; no tokenizer or model is needed. Warnings (skipped records, keys nothing reads) are appended to
    `notes`."""
    cfg = loaded.run
    if not cfg.data.train:
        raise ConfigError(f"{loaded.where('data')}: missing required key 'data.train'\n  fix: add the training data, "
                          "e.g. data: {train: train.jsonl}")
    return read_splits(loaded, objective, notes, {"train": cfg.data.train, "test": cfg.data.test or []},
                       sample=sample)


def read_splits(loaded: LoadedConfig, objective, notes: list[str], specs: dict[str, list[DatasetSpec]], *,
                sample: bool = False) -> dict[str, list | RecordStream]:
    """`load_splits` for the datasets named (a federated server reads only the test data; a client its own). The
    training data is a `RecordStream` under `data.streaming` (its first block read and checked now), and with
    `sample` (what `data check` asks) where a training file is too large to read whole."""
    cfg, kind = loaded.run, get_kind(objective.data)
    mixture = {"sampling": cfg.data.sampling, "temperature": cfg.data.temperature}  # training data only
    reader = kind.reader(cfg.task, cfg.data.label_names)
    streamed = bool(specs.get("train")) and (cfg.data.streaming or (sample and kind.streams
                                                                    and _huge(loaded, specs["train"])))
    if streamed and not kind.streams:
        raise ConfigError(f"{loaded.where('data', 'streaming')}: objective '{objective.name}' trains on {kind.name} "
                          f"records, which are not streamed ({kind.summary}: they are used whole)\n  fix: set "
                          "data.streaming: false (or use an objective that trains on sft or pairs records)")
    splits = {split: load_examples(entries, cfg.train.seed, loaded.resolve_path, bad_records=cfg.data.bad_records,
                                   notes=notes, reader=reader, **(mixture if split == "train" else {}))
              for split, entries in specs.items() if entries and not (split == "train" and streamed)}
    kind.check([e for examples in splits.values() for e in examples], objective.name, loaded)
    trained = {split: kind.as_trained(examples) for split, examples in splits.items()}
    if streamed:
        stream = RecordStream(specs["train"], loaded.resolve_path, cfg.data, reader,
                              lambda examples: kind.check(examples, objective.name, loaded))
        notes += stream.notes
        trained = {"train": stream, **trained}
    elif specs.get("train"):
        notes += [f"warning: {path}: {size / 2**30:.1f} GiB is read whole into memory; data.streaming: true reads it "
                  "a block at a time" for path, size in _sizes(loaded, specs["train"]) if size >= HUGE_BYTES]
    return trained


def _sizes(loaded: LoadedConfig, specs: list[DatasetSpec]) -> list[tuple[str, int]]:
    files = [Path(loaded.resolve_path(spec.path)) for spec in specs]
    return [(str(f), f.stat().st_size) for f in files if f.is_file()]


def _huge(loaded: LoadedConfig, specs: list[DatasetSpec]) -> bool:
    """Whether a training file is too large for `data check` to read whole (it samples the first block)."""
    return any(size >= HUGE_BYTES for _, size in _sizes(loaded, specs))
