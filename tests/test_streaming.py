"""`data.streaming`: training data read a block at a time (never whole), shuffled within blocks by the seed, with
a kill -9 and resume continuing from the same example; positioned readers that continue a file from a point; the
configs a stream cannot train refused before anything loads; `data check` sampling a stream's first block."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tests.conftest import qa_records, tiny_config, write_jsonl
from tests.reliability.killing import kill_at, resume
from tuneforge.cli import app

# 30 records in blocks of 7: blocks of 7, 7, 7, 7 and 2 an epoch; micro-batches of 3, two a step
STREAMED = {"streaming": True, "shuffle_buffer": 7}
TRAIN = {"max_steps": 8, "batch_size": 3, "grad_accum": 2, "save_every": 1, "keep_last": 20}


def streamed_config(directory: Path, model_dir: Path, records: int = 30, **data) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    config = tiny_config(directory, model_dir, train=TRAIN, eval={"metrics": ["loss"]})
    config["data"].update({**STREAMED, "train": str(write_jsonl(directory / "train.jsonl", qa_records(records))),
                           **data})
    path = directory / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def steps(config: Path) -> list[tuple[int, int, list[int]]]:
    from tuneforge.runs.layout import read_metrics

    return [(r["step"], r["epoch"], r["samples"]) for r in read_metrics(config.parent / "run") if r["kind"] == "train"]


@pytest.fixture(scope="module")
def streamed_reference(tmp_path_factory, tiny_model_dir) -> Path:
    config = streamed_config(tmp_path_factory.mktemp("streamed") / "full", tiny_model_dir)
    result = CliRunner().invoke(app, ["train", str(config), "--quiet"])
    assert result.exit_code == 0, result.output
    return config


def test_a_stream_trains_every_record_once_an_epoch_in_a_seeded_order(streamed_reference):
    rows = steps(streamed_reference)
    seen = [s for _, _, samples in rows for s in samples]
    # a block of 7 is micro-batches of 3, 3 and 1, the last block one of 2: 13 an epoch, 16 in eight steps
    assert len(seen) == 30 + 7
    epoch0, epoch1 = seen[:30], seen[30:]
    assert sorted(epoch0) == list(range(30)) and sorted(epoch1) == list(range(7))
    assert epoch0 != list(range(30))  # shuffled
    assert {s // 7 for s in epoch0[:7]} == {0}  # ... within its block: the first block's records come first
    assert [epoch for _, epoch, _ in rows][-1] == 1
    run = json.loads((streamed_reference.parent / "run" / "run.json").read_text())
    assert run["data"]["train"]["streamed"] is True and run["data"]["train"]["examples"] == 7


@pytest.mark.numerical
def test_a_killed_stream_resumes_at_the_same_example(tmp_path, tiny_model_dir, streamed_reference):
    """Killed inside step 5's window (its second micro-batch, in the third block): the resume reads that block
    again from the checkpoint's position and trains what the uninterrupted run trained, to the same adapter."""
    config = streamed_config(tmp_path / "cut", tiny_model_dir)
    config_data = yaml.safe_load(config.read_text())
    config_data["train"]["save_every"] = 2
    config.write_text(yaml.safe_dump(config_data))
    killed = kill_at("torch:Tensor.backward", 10, config)
    assert killed.returncode == -9, killed.stderr
    state = json.loads((config.parent / "run" / "checkpoints" / "step-00000004" / "state.json").read_text())
    assert state["data_position"]["block"] == 2 and state["data_position"]["point"][0] > 0
    resumed = resume(config)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resumed from step-00000004" in resumed.stdout
    assert steps(config) == steps(streamed_reference)
    adapter = Path("run") / "adapter" / "adapter_model.safetensors"
    assert (config.parent / adapter).read_bytes() == (streamed_reference.parent / adapter).read_bytes()


def test_a_stream_reads_a_block_at_a_time_and_names_a_bad_record_when_it_reaches_it(tmp_path, tiny_model_dir):
    """A malformed line past the first block is not read before training (the first block is checked, the rest as
    it trains): `data check` says it sampled, training stops with the line when it gets there (step 2)."""
    config = streamed_config(tmp_path / "bad", tiny_model_dir)
    train = config.parent / "train.jsonl"
    lines = train.read_text().splitlines(keepends=True)
    train.write_text("".join([*lines[:9], "{not json\n", *lines[9:]]))
    checked = CliRunner().invoke(app, ["data", "check", str(config)])
    assert checked.exit_code == 0, checked.output
    assert "sampled: the first 7 records" in checked.output
    result = CliRunner().invoke(app, ["train", str(config), "--quiet"])
    assert result.exit_code == 2
    assert f"{train}:10" in result.output and "malformed JSON" in result.output and "fix:" in result.output
    status = json.loads((config.parent / "run" / "run.json").read_text())["status"]
    assert status == "failed" and [step for step, _, _ in steps(config)] == [1]  # trained before it got there


@pytest.mark.parametrize("change, key, said", [
    ({"train": {"max_steps": None}}, "data.streaming", "set train.max_steps"),
    ({"data": {"train": [{"path": "train.jsonl", "weight": 2.0}]}}, "data.streaming", "mix the files beforehand"),
    ({"strategy": {"name": "sequential"}}, "data.streaming", "strategy: single"),
    ({"objective": "kto"}, "data.streaming", "not streamed"),
    ({"data": {"train": "train.json"}}, "train.json", "write the records as JSON Lines"),
])
def test_what_a_stream_cannot_train_is_refused_before_anything_loads(tmp_path, tiny_model_dir, change, key, said):
    config = streamed_config(tmp_path, tiny_model_dir)
    (tmp_path / "train.json").write_text(json.dumps(qa_records(4)))
    data = yaml.safe_load(config.read_text())
    for section, value in change.items():
        data[section] = {**data[section], **value} if isinstance(value, dict) and section in data else value
    if data["train"].get("max_steps", 1) is None:
        del data["train"]["max_steps"]
    if data.get("objective") == "kto":  # rated records, what KTO trains on
        for name in ("train.jsonl", "test.jsonl"):
            write_jsonl(tmp_path / name, [{**r, "label": i % 2 == 0} for i, r in enumerate(qa_records(8))])
    config.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(app, ["train", str(config), "--quiet"])
    assert result.exit_code == 2, result.output
    assert key in result.output and said in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".csv", ".tsv", ".parquet"])
def test_a_file_read_from_a_point_continues_with_the_record_after_it(tmp_path, suffix):
    from tuneforge.data.sources import read_from, read_records

    rows = [{"prompt": f"q{i}\twith, a comma", "completion": f"a{i}"} for i in range(9)]
    path = tmp_path / f"data{suffix}"
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=4)
    elif suffix == ".csv":
        import csv

        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, ["prompt", "completion"])
            writer.writeheader()
            writer.writerows(rows)
    elif suffix == ".tsv":
        path.write_text("prompt\tcompletion\n" + "".join(f"{r['prompt'].replace(chr(9), ' ')}\t{r['completion']}\n"
                                                          for r in rows))
    else:
        text = "".join(json.dumps(r) + "\n" + ("\n" if i == 3 else "") for i, r in enumerate(rows))
        path.write_bytes(gzip.compress(text.encode()) if suffix.endswith(".gz") else text.encode())
    whole = list(read_records(str(path)))
    points = list(read_from(str(path)))
    assert [r for _, r in points] == whole
    for cut in (1, 4, 5, 8):
        assert list(read_from(str(path), points[cut - 1][0])) == points[cut:]


def test_data_check_samples_a_huge_training_file_and_training_it_whole_is_warned_about(tmp_path, tiny_model_dir,
                                                                                       monkeypatch):
    """A file of HUGE_BYTES or more (1 GiB; lowered here) is sampled by `data check` even without data.streaming,
    and said to be: the check does not read it whole."""
    from tuneforge.data import kinds

    config = streamed_config(tmp_path, tiny_model_dir)
    data = yaml.safe_load(config.read_text())
    data["data"]["streaming"] = False
    config.write_text(yaml.safe_dump(data))
    monkeypatch.setattr(kinds, "HUGE_BYTES", 100)
    checked = CliRunner().invoke(app, ["data", "check", str(config)])
    assert checked.exit_code == 0, checked.output
    assert "sampled: the first 7 records" in checked.output and "30 examples" not in checked.output
    from tuneforge.config import load_config
    from tuneforge.objectives import get_objective

    notes: list[str] = []
    splits = kinds.load_splits(load_config(config), get_objective("sft"), notes)
    assert len(splits["train"]) == 30 and "data.streaming: true reads it a block at a time" in notes[0]
