"""Every bad-input case stops before any model weights load, naming file:line and field, exit code 2,
leaving nothing in the output directory."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tuneforge.cli import app
from tuneforge.config import DatasetSpec
from tuneforge.data.dataset import load_examples
from tuneforge.errors import DataError

GOOD = json.dumps({"prompt": "hi", "completion": "there"})

CASES = {
    "malformed_json": ([GOOD, '{"prompt": "a", "completion": ', GOOD], 2, None, "malformed JSON"),
    "missing_field": ([GOOD, GOOD, json.dumps({"prompt": "a", "completion": None})], 3, "completion", "missing"),
    "wrong_type": ([GOOD, json.dumps({"prompt": 5, "completion": "b"})], 2, "prompt", "expected a string"),
    "empty_completion": ([GOOD, json.dumps({"prompt": "a", "completion": "  "})], 2, "completion", "is empty"),
    "unknown_format": ([json.dumps({"question": "a", "answer": "b"})], 1, None, "cannot tell the record format"),
    "not_an_object": ([GOOD, "[1, 2]"], 2, None, "expected a JSON object"),
    "empty_assistant_turn": ([json.dumps({"messages": [{"role": "user", "content": "a"},
                                                       {"role": "assistant", "content": ""}]})],
                             1, "messages[1].content", "assistant turn is empty"),
    "unknown_role": ([json.dumps({"messages": [{"role": "human", "content": "a"},
                                               {"role": "assistant", "content": "b"}]})],
                     1, "messages[0].role", "unknown role"),
    "no_assistant": ([json.dumps({"messages": [{"role": "user", "content": "a"}]})], 1, "messages",
                     "no assistant turn"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_record_is_located(tmp_path, case):
    lines, line, field, problem = CASES[case]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        load_examples([DatasetSpec(path=str(path))], seed=0)
    message = str(err.value)
    assert message.startswith(f"{path}:{line}:")
    assert problem in message
    if field:
        assert f"field '{field}'" in message
    assert "fix:" in message


def test_json_array_line_numbers(tmp_path):
    path = tmp_path / "data.json"
    path.write_text('[\n {"prompt": "a", "completion": "b"},\n\n {"prompt": "a", "completion": 3}\n]\n')
    with pytest.raises(DataError, match=r"data.json:4: field 'completion': expected a string"):
        load_examples([DatasetSpec(path=str(path))], seed=0)


def test_csv_line_numbers(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text('prompt,completion\n"a","b"\n"c",""\n')
    with pytest.raises(DataError, match=r"data.csv:3: field 'completion': is empty"):
        load_examples([DatasetSpec(path=str(path))], seed=0)


def test_unsupported_extension(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("hello")
    with pytest.raises(DataError, match=r"unsupported file type '.txt'"):
        load_examples([DatasetSpec(path=str(path))], seed=0)


@pytest.mark.parametrize("case", ["malformed_json", "empty_completion", "unknown_format"])
def test_train_stops_before_weights_load(tmp_path, tiny_model_dir, monkeypatch, case):
    import tuneforge.engine.session as run_module

    def must_not_load(*args, **kwargs):
        raise AssertionError("model weights were loaded before the data was validated")

    monkeypatch.setattr(run_module, "load_model", must_not_load)
    lines = CASES[case][0]
    data = tmp_path / "bad.jsonl"
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {tiny_model_dir}\ndata:\n  train: bad.jsonl\noutput:\n  dir: {out}\n")
    result = CliRunner().invoke(app, ["train", str(config)])
    assert result.exit_code == 2, result.output
    assert f"{data}:{CASES[case][1]}:" in result.output
    assert not out.exists()


def test_drop_fraction_guard(tmp_path, tokenizer):
    from tuneforge.config import DataConfig
    from tuneforge.data.dataset import encode_examples

    records = [{"prompt": "word " * (200 if i < 3 else 2), "completion": "ok"} for i in range(20)]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    examples = load_examples([DatasetSpec(path=str(path))], seed=0)
    cfg = DataConfig(train=[str(path)], max_seq_len=64, overlong="drop")
    with pytest.raises(DataError, match=r"3 of 20 examples \(15.0%\) would be dropped"):
        encode_examples(examples, tokenizer, cfg)
    kept, stats = encode_examples(examples, tokenizer, cfg.model_copy(update={"max_drop_fraction": 0.2}))
    assert stats.dropped == 3 and len(kept) == 17
    with pytest.raises(DataError, match=r"d.jsonl:1: example has \d+ tokens"):
        encode_examples(examples, tokenizer, cfg.model_copy(update={"overlong": "error"}))
    # the long prompts fill the window and cut every trained token away: truncating cannot save them
    with pytest.raises(DataError, match=r"3 of 20 examples") as err:
        encode_examples(examples, tokenizer, cfg.model_copy(update={"overlong": "truncate"}))
    # the advice fits the setting: truncating is already on, so it says what truncating cannot fix
    assert "prompt alone fills" in str(err.value) and "set data.overlong: truncate" not in str(err.value)
    long_answers = [{"prompt": "q", "completion": "word " * (200 if i < 3 else 2)} for i in range(20)]
    path.write_text("".join(json.dumps(r) + "\n" for r in long_answers))
    examples = load_examples([DatasetSpec(path=str(path))], seed=0)
    kept, stats = encode_examples(examples, tokenizer, cfg.model_copy(update={"overlong": "truncate"}))
    assert stats.truncated == 3 and stats.dropped == 0 and max(len(k.encoded) for k in kept) == 64
