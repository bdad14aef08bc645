"""Task families, for meta-learning and few-shot curves: many small tasks, each with its own training records and
test set, split into meta-training tasks and held-out targets that meta-training never sees.

Two layouts are read:

- tuneforge's (the bundled `textops`, `data.family_textops`): family.json
  {"meta_train": [...], "targets": [...], "instructions": {task: text}} and a folder per task holding train.jsonl
  (the pool k-shot support sets are drawn from, by seed) and test.jsonl.
- MetaICL's and CrossFit's, as distributed: a folder per task of `{task}_{k}_{seed}_{split}.jsonl` files (split
  train, dev or test; MetaICL's test files carry seed 100), the meta-training and target tasks named by a split file
  in MetaICL's config layout, {"train": [...], "test": [...]}. A k-shot set is the file for that k and seed.

A record is {"input", "output"} (MetaICL's "task" and "options" are read too); it becomes an example whose system
turn is the task's instruction (where it has one), whose user turn is the input and whose answer is the output,
tagged with its task."""

from __future__ import annotations

import dataclasses
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from tuneforge.config import LoadedConfig
from tuneforge.data.formats import Example, normalise, record_object
from tuneforge.data.sources import RawRecord, read_records
from tuneforge.errors import DataError

BUNDLED = {"textops": Path(__file__).parent / "families" / "textops"}
FAMILY_FILE = "family.json"
SHOT_FILE = re.compile(r"^(?P<task>.+)_(?P<k>\d+)_(?P<seed>\d+)_(?P<split>train|dev|test)\.jsonl$")


@dataclass(frozen=True)
class FamilyTask:
    """One task of a family: where its records are and the instruction its prompts start with."""

    name: str
    instruction: str
    pool: Path | None  # tuneforge's layout: every training record, k-shot sets drawn from it
    shots: dict[tuple[int, int], Path]  # MetaICL's layout: (k, seed) -> that k-shot training file
    test: Path

    def support(self, k: int, seed: int) -> list[Example]:
        """k training examples drawn with `seed`: from the pool, the first k of its order under that seed (so the
        4-shot set is inside the 16-shot set of the same seed), or MetaICL's file for that k and seed."""
        if k == 0:
            return []
        if self.pool is None:
            path = self.shots.get((k, seed))
            if path is None:
                have = ", ".join(f"k={k} seed={s}" for k, s in sorted(self.shots)) or "none"
                raise DataError(str(self.test.parent), None, None, f"task {self.name} has no {k}-shot training file "
                                f"for seed {seed} ({self.name}_{k}_{seed}_train.jsonl); it has: {have}",
                                "choose k and seeds the family has files for")
            return self._examples(path)
        examples = self._examples(self.pool)
        if k > len(examples):
            raise DataError(str(self.pool), None, None, f"task {self.name} has {len(examples)} training records, "
                            f"fewer than k={k}", "lower k, or add records to the task's train.jsonl")
        order = list(range(len(examples)))
        random.Random(f"{self.name}/{seed}").shuffle(order)
        return [examples[i] for i in order[:k]]

    def training(self) -> list[Example]:
        """Every training record (what meta-training samples a task's support and query sets from): the pool, or
        the largest k-shot file of MetaICL's layout (its meta-training files are the 16,384-shot ones)."""
        if self.pool is not None:
            return self._examples(self.pool)
        return self._examples(self.shots[max(self.shots)])

    def tests(self) -> list[Example]:
        return self._examples(self.test)

    def size(self) -> int:
        """How many training records `training` gives (counted, not checked)."""
        path = self.pool if self.pool is not None else self.shots[max(self.shots)]
        with path.open("rb") as handle:
            return sum(1 for line in handle if line.strip())

    def seeds_for(self, k: int, count: int) -> list[int]:
        """The seeds of `count` draws of k examples: 0, 1, ... from the pool, or the first `count` seeds MetaICL's
        files have for that k (13, 21, 42, 87, 100 as distributed); fewer where the family has fewer."""
        if k == 0:
            return [0]
        if self.pool is not None:
            return list(range(count)) if k <= self.size() else []
        return sorted(s for kk, s in self.shots if kk == k)[:count]

    def _examples(self, path: Path) -> list[Example]:
        return [_example(record, self) for record in read_records(str(path))]


@dataclass(frozen=True)
class TaskFamily:
    root: Path
    tasks: dict[str, FamilyTask]
    meta_train: tuple[str, ...]
    targets: tuple[str, ...]


def read_family(source: str, split: str | None = None) -> TaskFamily:
    """The family in folder `source` (or a bundled family's name); `split` is MetaICL's split file where the folder
    has no family.json."""
    root = BUNDLED.get(source, Path(source))
    if not root.is_dir():
        raise DataError(source, None, None, "no such task family folder", "give a folder of task folders, or a "
                        f"bundled family: {', '.join(BUNDLED)}")
    described = root / FAMILY_FILE
    if split is None and not described.is_file():
        raise DataError(str(root), None, None, f"no {FAMILY_FILE} and no split file naming the meta-training and "
                        "target tasks", f"add {FAMILY_FILE} {{\"meta_train\": [...], \"targets\": [...]}}, or give "
                        "MetaICL's split file ({\"train\": [...], \"test\": [...]})")
    path = Path(split) if split is not None else described
    spec = _json_object(path)
    keys = ("train", "test") if split is not None else ("meta_train", "targets")
    names = [_task_names(spec, key, path) for key in keys]
    overlap = sorted(set(names[0]) & set(names[1]))
    if overlap:
        raise DataError(str(path), None, keys[1], f"tasks {overlap} are both meta-training and target tasks",
                        "a target task must be one meta-training never sees: name each task once")
    instructions = spec.get("instructions") or {}
    tasks = {name: _task(root, name, str(instructions.get(name, ""))) for name in [*names[0], *names[1]]}
    return TaskFamily(root, tasks, tuple(names[0]), tuple(names[1]))


def family_for(loaded: LoadedConfig, family: str, split: str | None) -> TaskFamily:
    """The family a config names: a bundled one, or a folder (and MetaICL split file) beside the config."""
    source = family if family in BUNDLED else loaded.resolve_path(family)
    return read_family(source, loaded.resolve_path(split) if split else None)


def _json_object(path: Path) -> dict:
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(str(path), None, None, f"cannot read the file: {exc}", "check the path") from None
    except json.JSONDecodeError as exc:
        raise DataError(str(path), exc.lineno, None, f"malformed JSON: {exc.msg}", "fix the JSON") from None
    if not isinstance(spec, dict):
        raise DataError(str(path), 1, None, "expected a JSON object", "write {\"meta_train\": [...], ...}")
    return spec


def _task_names(spec: dict, key: str, path: Path) -> list[str]:
    names = spec.get(key)
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise DataError(str(path), None, key, f"expected a non-empty list of task names, got {names!r}",
                        f"list the task folders under '{key}'")
    return names


def _task(root: Path, name: str, instruction: str) -> FamilyTask:
    folder = root / name
    if not folder.is_dir():
        raise DataError(str(root), None, name, f"no folder for task {name}", f"add {folder}, or remove the task from "
                        "the family's lists")
    if (folder / "test.jsonl").is_file():
        pool = folder / "train.jsonl"
        if not pool.is_file():
            raise DataError(str(folder), None, None, "test.jsonl without train.jsonl", "add the task's train.jsonl")
        return FamilyTask(name, instruction, pool, {}, folder / "test.jsonl")
    shots, tests = {}, []
    for path in sorted(folder.iterdir()):
        match = SHOT_FILE.match(path.name)
        if match and match["task"] == name:
            if match["split"] == "train":
                shots[int(match["k"]), int(match["seed"])] = path
            elif match["split"] == "test":
                tests.append(path)
    if not shots or not tests:
        raise DataError(str(folder), None, None, f"task {name} has no {'training' if not shots else 'test'} file",
                        f"give it train.jsonl and test.jsonl, or MetaICL's {name}_{{k}}_{{seed}}_{{train,test}}.jsonl")
    return FamilyTask(name, instruction, None, shots, tests[0])


def _example(record: RawRecord, task: FamilyTask) -> Example:
    data = record_object(record)  # a malformed line or a non-object: a located error
    for key in ("input", "output"):
        if not isinstance(data.get(key), str):
            raise DataError(record.path, record.where, key, f"expected a string, got {data.get(key)!r}",
                            f"give each record an '{key}' string")
    example = normalise(RawRecord(record.path, record.where, {"prompt": data["input"], "completion": data["output"]}),
                        "prompt_completion")
    if task.instruction:  # the task's instruction is its system turn: said once, before any in-context examples
        example = dataclasses.replace(example, messages=({"role": "system", "content": task.instruction},
                                                         *example.messages))
    return dataclasses.replace(example, task=task.name)
