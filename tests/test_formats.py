"""A user's own data in each supported record format and file type trains with no code."""

from __future__ import annotations

import json

import pytest

from tests.conftest import tiny_config
from tuneforge.api import train

CONVERSATION = [{"role": "user", "content": "Name a colour"}, {"role": "assistant", "content": "Blue"},
                {"role": "user", "content": "Another"}, {"role": "assistant", "content": "Red"}]
RECORDS = {
    "messages": {"messages": CONVERSATION},
    "sharegpt": {"conversations": [{"from": "human" if m["role"] == "user" else "gpt", "value": m["content"]}
                                   for m in CONVERSATION]},
    "prompt_completion": {"prompt": "Name a colour", "completion": "Blue"},
    "alpaca": {"instruction": "Name a colour", "input": "warm ones only", "output": "Red"},
    "text": {"text": "Colours: blue, red, green."},
}


def write(path, records):
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    elif path.suffix == ".json":
        path.write_text(json.dumps(records, indent=1))
    elif path.suffix == ".csv":
        import csv

        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(records[0]))
            writer.writeheader()
            writer.writerows(records)
    elif path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(records), path)
    else:
        import datasets

        datasets.Dataset.from_list(records).save_to_disk(str(path))
    return path


def trains(tmp_path, model_dir, data_path):
    config = tiny_config(tmp_path, model_dir, train={"max_steps": 2, "batch_size": 2})
    config["data"] = {"train": str(data_path), "test": str(data_path), "max_seq_len": 96}
    result = train(config, quiet=True)
    assert result.steps == 2 and (result.run_dir / "adapter" / "adapter_model.safetensors").is_file()
    return result


@pytest.mark.parametrize("fmt", sorted(RECORDS))
def test_each_record_format_trains(tmp_path, tiny_model_dir, fmt):
    result = trains(tmp_path, tiny_model_dir, write(tmp_path / "data.jsonl", [RECORDS[fmt]] * 6))
    assert result.eval_after["loss"] > 0


@pytest.mark.parametrize("suffix", [".json", ".csv", ".parquet", ""])
def test_each_file_type_trains(tmp_path, tiny_model_dir, suffix):
    trains(tmp_path, tiny_model_dir, write(tmp_path / f"data{suffix or '_saved'}", [RECORDS["alpaca"]] * 6))


def test_mixture_weights_scale_sources(tmp_path):
    from tuneforge.config import DatasetSpec
    from tuneforge.data.dataset import load_examples

    a = write(tmp_path / "a.jsonl", [RECORDS["prompt_completion"]] * 10)
    b = write(tmp_path / "b.jsonl", [RECORDS["text"]] * 10)
    mixed = load_examples([DatasetSpec(path=str(a), weight=2.0), DatasetSpec(path=str(b), weight=0.5)], seed=1)
    assert sum(e.is_chat for e in mixed) == 20 and sum(not e.is_chat for e in mixed) == 5
