"""Promise 8: whatever bytes or JSON a data file holds, reading and validating it either gives examples or
fails with a DataError that names the file (and the line where there is one); no other exception escapes.
Hypothesis generates the files: random bytes for every reader, and random JSON records (any shape, any
types) for the record-format validation behind them."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tuneforge.config import DatasetSpec
from tuneforge.data.dataset import load_examples
from tuneforge.errors import DataError

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                                       max_size=4),
                           max_leaves=12)
# records biased toward the keys the formats look for, so validation (not only detection) is exercised
keys = st.sampled_from(["prompt", "completion", "chosen", "rejected", "label", "messages", "conversations",
                        "instruction", "input", "output", "text", "role", "content", "from", "value", "system"])
records = st.dictionaries(keys, json_values | st.lists(st.dictionaries(keys, json_values, max_size=3), max_size=3),
                          max_size=5)


def read(suffix: str, content: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"data{suffix}"
        path.write_bytes(content)
        try:
            load_examples([DatasetSpec(path=str(path))], seed=0)
        except DataError as exc:
            assert str(path) in str(exc) and "fix:" in str(exc)


@FUZZ
@given(content=st.binary(max_size=300), suffix=st.sampled_from([".jsonl", ".json", ".csv", ".parquet"]))
def test_random_bytes_in_every_reader(content, suffix):
    read(suffix, content)


@FUZZ
@given(rows=st.lists(records | json_values, min_size=1, max_size=4))
@example(rows=[{"conversations": [{"from": []}]}])  # found by this test: a list as a role was a TypeError
def test_random_json_records(rows):
    read(".jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
    read(".json", json.dumps(rows).encode())


@FUZZ
@given(header=st.lists(keys, min_size=1, max_size=4), cells=st.lists(st.text(max_size=20), max_size=8))
def test_random_csv_tables(header, cells):
    lines = [",".join(header)] + [",".join(json.dumps(c) for c in cells[i:i + len(header)])
                                  for i in range(0, len(cells), len(header))]
    read(".csv", "\n".join(lines).encode())
