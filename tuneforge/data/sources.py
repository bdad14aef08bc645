"""Reading raw records from files, keeping where each one came from (file and line, or row).

Every reader yields `RawRecord`s whose `where` is what an error message should print after the file
name: a line number for JSON Lines, JSON and CSV, `row N` for Parquet and saved HF datasets.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.errors import DataError

BUNDLED_PREFIX = "quickstart:"
BUNDLED_DIR = Path(__file__).parent / "quickstart"


@dataclass(frozen=True)
class RawRecord:
    path: str
    where: int | str
    data: Any


def resolve_source(path: str) -> Path:
    """The file or directory behind a dataset path; `quickstart:train` names a bundled split."""
    if path.startswith(BUNDLED_PREFIX):
        name = path[len(BUNDLED_PREFIX):]
        bundled = BUNDLED_DIR / f"{name}.jsonl"
        if not bundled.is_file() or bundled.parent != BUNDLED_DIR:  # a plain name: no way out of the directory
            choices = sorted(p.stem for p in BUNDLED_DIR.glob("*.jsonl"))
            raise DataError(path, None, None, "no such bundled dataset",
                            f"use one of: {', '.join(BUNDLED_PREFIX + c for c in choices)}")
        return bundled
    resolved = Path(path)
    if not resolved.exists():
        raise DataError(path, None, None, "file not found",
                        "check the path (relative paths in a config are relative to the config file)")
    return resolved


def read_records(path: str, split: str | None = None) -> Iterator[RawRecord]:
    """Yield every record of a dataset file or saved dataset directory, in order."""
    source = resolve_source(path)
    shown = path if path.startswith(BUNDLED_PREFIX) else str(source)
    if source.is_dir():
        yield from _read_saved_dataset(source, shown, split)
        return
    reader = _READERS.get(source.suffix.lower())
    if reader is None:
        raise DataError(shown, None, None, f"unsupported file type '{source.suffix}'",
                        "use .jsonl, .json, .csv, .parquet or a directory written by datasets' save_to_disk")
    yield from reader(source, shown)


def _read_jsonl(source: Path, shown: str) -> Iterator[RawRecord]:
    with source.open("r", encoding="utf-8", errors="strict") as handle:
        lineno = 0
        while True:
            lineno += 1
            try:
                line = handle.readline()
            except UnicodeDecodeError as exc:
                raise DataError(shown, lineno, None, f"not valid UTF-8 ({exc.reason})",
                                "save the file as UTF-8") from None
            if not line:
                return
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(shown, lineno, None, f"malformed JSON: {exc.msg} (column {exc.colno})",
                                "each line must be one complete JSON object") from None
            yield RawRecord(shown, lineno, data)


def _read_json(source: Path, shown: str) -> Iterator[RawRecord]:
    try:
        text = source.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(shown, None, None, f"not valid UTF-8 ({exc.reason})", "save the file as UTF-8") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(shown, exc.lineno, None, f"malformed JSON: {exc.msg} (column {exc.colno})",
                        "the file must be a JSON array of objects (or use .jsonl, one object per line)") from None
    if not isinstance(data, list):
        raise DataError(shown, 1, None, f"expected a JSON array of records, got a {type(data).__name__}",
                        "wrap the records in [ ... ] or write them as JSON Lines (.jsonl)")
    for item, line in zip(data, _array_item_lines(text), strict=False):
        yield RawRecord(shown, line, item)


def _array_item_lines(text: str) -> Iterator[int]:
    """Line number of each top-level element of a JSON array (the text is known to be valid JSON)."""
    decoder = json.JSONDecoder()
    index = text.index("[") + 1
    while True:
        while index < len(text) and text[index] in " \t\r\n,":
            index += 1
        if index >= len(text) or text[index] == "]":
            return
        yield text.count("\n", 0, index) + 1
        _, index = decoder.raw_decode(text, index)


def _read_csv(source: Path, shown: str) -> Iterator[RawRecord]:
    with source.open("r", encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        try:
            for row in reader:
                if None in row:
                    raise DataError(shown, reader.line_num, None, "more values than header columns",
                                    "quote values that contain commas")
                yield RawRecord(shown, reader.line_num, dict(row))
        except (csv.Error, UnicodeDecodeError) as exc:
            raise DataError(shown, reader.line_num, None, f"malformed CSV: {exc}",
                            "fix the quoting on that line, and save the file as UTF-8") from None


def _read_parquet(source: Path, shown: str) -> Iterator[RawRecord]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(source)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(shown, None, None, f"cannot read Parquet: {exc}", "check the file is valid Parquet") from None
    for index, row in enumerate(table.to_pylist()):
        yield RawRecord(shown, f"row {index}", row)


def _read_saved_dataset(source: Path, shown: str, split: str | None) -> Iterator[RawRecord]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(source))
    except (FileNotFoundError, ValueError) as exc:
        raise DataError(shown, None, None, f"not a dataset saved with save_to_disk ({exc})",
                        "point to a directory written by Dataset.save_to_disk, or a data file") from None
    if isinstance(loaded, datasets.DatasetDict):
        chosen = split or ("train" if "train" in loaded else None)
        if chosen not in loaded:
            raise DataError(shown, None, "split", f"the saved DatasetDict has splits {list(loaded)}",
                            "set `split:` on this dataset entry to one of them")
        loaded = loaded[chosen]
    for index, row in enumerate(loaded):
        yield RawRecord(shown, f"row {index}", row)


_READERS = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet}
