"""A disk cache of tokenized examples, so a second run over the same data does no tokenizing.

The key covers everything that decides the tokens and labels: the normalised examples, the tokenizer
(vocabulary, chat template, special tokens), the rendering mode and train_on_prompt. The length policy
is applied after the cache, so changing max_seq_len reuses it. Arrays are stored as .npy files loaded
with allow_pickle=False, written into a temporary directory and renamed into place.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import pickle
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tuneforge.config import tuneforge_home
from tuneforge.data.formats import Example
from tuneforge.data.render import Encoded

FORMAT_VERSION = 3  # bump when the encoding of labels changes, so old entries are not reused
ARRAYS = ("ids", "labels", "lengths", "turn_ends", "turn_counts")


def cache_dir() -> Path:
    return tuneforge_home() / "cache" / "encoded"


def cache_key(examples: Sequence[Example], tokenizer, *, chat: bool, train_on_prompt: bool) -> str:
    digest = hashlib.sha256(json.dumps({"version": FORMAT_VERSION, "chat": chat, "train_on_prompt": train_on_prompt,
                                        "template": getattr(tokenizer, "chat_template", None),
                                        "specials": tokenizer.all_special_tokens}).encode())
    digest.update(tokenizer.backend_tokenizer.to_str().encode())
    # pickle of plain strings, ints, dicts and tuples is deterministic, and several times faster than JSON here
    digest.update(pickle.dumps([(e.messages, e.text, e.prompt_turns) for e in examples], protocol=5))
    return digest.hexdigest()


def load(key: str) -> list[Encoded] | None:
    path = cache_dir() / key
    if not (path / "complete").is_file():
        return None
    try:
        arrays = {name: np.load(path / f"{name}.npy", allow_pickle=False) for name in ARRAYS}
    except (OSError, ValueError):
        return None
    return _unpack(arrays)


class Writer:
    """Packs encodings into the cache's arrays a block at a time (as the encoder gives them out, while it tokenizes
    the next block), then writes the entry whole: staged in a temporary directory and renamed into place."""

    def __init__(self, key: str):
        self.key = key
        self.parts: dict[str, list[np.ndarray]] = {name: [] for name in ARRAYS}

    def add(self, encoded: Sequence[Encoded]) -> None:
        for name, array in _pack(encoded).items():
            self.parts[name].append(array)

    def finish(self) -> None:
        root = cache_dir()
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".writing-", dir=root))
        try:
            for name, parts in self.parts.items():
                np.save(staging / f"{name}.npy", np.concatenate(parts) if parts else np.zeros(0, np.int64),
                        allow_pickle=False)
            (staging / "complete").write_text("")
            target = root / self.key
            if target.exists():
                shutil.rmtree(staging)  # another process wrote the same entry first
                return
            os.replace(staging, target)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)  # a cache that cannot be written is only a slower rerun


def _pack(encoded: Sequence[Encoded]) -> dict[str, np.ndarray]:
    def flat(rows):  # chain + one array conversion: several times faster than fromiter over a generator
        return np.array(list(itertools.chain.from_iterable(rows)), dtype=np.int64)

    return {"ids": flat(e.input_ids for e in encoded), "labels": flat(e.labels for e in encoded),
            "lengths": np.array([len(e) for e in encoded], dtype=np.int64),
            "turn_ends": flat(e.turn_ends for e in encoded),
            "turn_counts": np.array([len(e.turn_ends) for e in encoded], dtype=np.int64)}


def _unpack(arrays: dict[str, np.ndarray]) -> list[Encoded]:
    ids, labels, turn_ends = arrays["ids"].tolist(), arrays["labels"].tolist(), arrays["turn_ends"].tolist()
    result, start, turn_start = [], 0, 0
    for length, turns in zip(arrays["lengths"].tolist(), arrays["turn_counts"].tolist(), strict=True):
        result.append(Encoded(ids[start:start + length], labels[start:start + length],
                              tuple(turn_ends[turn_start:turn_start + turns])))
        start, turn_start = start + length, turn_start + turns
    return result
