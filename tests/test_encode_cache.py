"""Tokenized data is cached: a rerun over the same data does no tokenizing and gets the same labels."""

from __future__ import annotations

import pytest

from tests.conftest import qa_records, write_jsonl
from tuneforge.config import DataConfig
from tuneforge.data import cache, dataset
from tuneforge.data.dataset import encode_examples, load_examples


def encode(path, tokenizer, **settings):
    cfg = DataConfig(train=[str(path)], **settings)
    return encode_examples(load_examples(cfg.train, seed=0), tokenizer, cfg)[0]


def no_tokenizing(*args, **kwargs):
    raise AssertionError("tokenized although the cache holds this data")


def test_second_run_reads_the_cache(tmp_path, tokenizer, monkeypatch):
    path = write_jsonl(tmp_path / "d.jsonl", qa_records(12))
    first = encode(path, tokenizer)
    monkeypatch.setattr(dataset, "encode_blocks", no_tokenizing)
    second = encode(path, tokenizer, max_seq_len=512)  # the length policy applies after the cache
    assert [e.encoded for e in second] == [e.encoded for e in first]
    with pytest.raises(AssertionError, match="tokenized although"):
        encode(path, tokenizer, train_on_prompt=True)  # changes the labels: a different entry


def test_changed_data_misses_and_damage_is_ignored(tmp_path, tokenizer, monkeypatch):
    path = write_jsonl(tmp_path / "d.jsonl", qa_records(12))
    reference = encode(path, tokenizer)
    for entry in cache.cache_dir().iterdir():
        for array in entry.glob("labels.npy"):
            array.write_bytes(b"not an array")
    monkeypatch.setattr(dataset, "encode_blocks", no_tokenizing)
    with pytest.raises(AssertionError):
        encode(path, tokenizer)  # the damaged entry is not used
    monkeypatch.undo()
    assert [e.encoded for e in encode(path, tokenizer, cache=False)] == [e.encoded for e in reference]
    write_jsonl(path, qa_records(13))
    monkeypatch.setattr(dataset, "encode_blocks", no_tokenizing)
    with pytest.raises(AssertionError):
        encode(path, tokenizer)  # new data, new key
