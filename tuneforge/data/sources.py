"""Reading raw records from files, keeping where each one came from (file and line, or row).

Every reader yields `RawRecord`s whose `where` is what an error message should print after the file
name: a line number for JSON Lines, JSON, CSV and TSV (a sentence's first line for CoNLL), `row N` for Parquet and
saved HF datasets. A UTF-8 byte order mark is dropped, and gzipped files (`.jsonl.gz`, `.csv.gz` ...) are read as
they are.
"""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

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
    """Yield every record of a dataset file or saved dataset directory, in order. A record that cannot be read
    (a malformed JSON line, bytes that are not UTF-8) comes as a `Malformed` datum, so that the caller decides
    whether it stops the run (the default) or is skipped (`data.bad_records: skip`)."""
    source = resolve_source(path)
    shown = _shown(path, source)
    if source.is_dir():
        yield from _read_saved_dataset(source, shown, split)
        return
    kind, compressed = _file_type(source)
    reader = _READERS.get(kind)
    if reader is None:
        raise DataError(shown, None, None, f"unsupported file type '{''.join(source.suffixes[-2:]) or source.name}'",
                        _how_to_convert(kind))
    yield from reader(source, shown, compressed)


# where a streamed file is: what it takes to read on from just after a record (a byte offset and a line number,
# rows read, ...), as plain integers a checkpoint's JSON keeps
Point = tuple[int, int]


def read_from(path: str, point: Point | None = None) -> Iterator[tuple[Point, RawRecord]]:
    """Every record of a file from `point` (the start when None) on, each with the point just after it, read a
    line or a row group at a time: what `data.streaming` reads. JSON Lines, CSV, TSV and Parquet stream; other
    layouts are refused with how to convert."""
    source = resolve_source(path)
    shown = _shown(path, source)
    kind, compressed = ("", False) if source.is_dir() else _file_type(source)
    reader = _POSITIONED.get(kind)
    if reader is None:
        raise DataError(shown, None, None, f"a {'saved dataset directory' if source.is_dir() else kind or 'file'} "
                        "cannot be streamed (data.streaming reads .jsonl, .csv, .tsv and .parquet a part at a time)",
                        "write the records as JSON Lines or Parquet, or set data.streaming: false")
    yield from reader(source, shown, compressed, point or (0, 0))


def _shown(path: str, source: Path) -> str:
    """How a file is named in messages: a bundled dataset by its name, a file by its path."""
    return path if path.startswith(BUNDLED_PREFIX) else str(source)


def _file_type(source: Path) -> tuple[str, bool]:
    """The file's type ('.jsonl') and whether it is gzipped."""
    suffixes = [s.lower() for s in source.suffixes[-2:]]
    compressed = bool(suffixes) and suffixes[-1] == ".gz"
    return (suffixes[-2] if compressed and len(suffixes) == 2 else (suffixes[-1] if suffixes else "")), compressed


@dataclass(frozen=True)
class Malformed:
    """A record that could not be read: what was wrong and how to fix it."""

    problem: str
    fix: str


def _open_binary(source: Path, compressed: bool) -> BinaryIO:
    return gzip.open(source, "rb") if compressed else source.open("rb")


def _read_all_text(source: Path, shown: str, compressed: bool) -> str:
    """The whole file as text (a UTF-8 BOM dropped); bytes that are not UTF-8 are named by their line."""
    try:
        with _open_binary(source, compressed) as handle:
            data = handle.read()
    except (OSError, EOFError) as exc:  # a truncated or corrupt .gz
        raise DataError(shown, None, None, f"cannot read the file: {exc}", "check the file (re-compress it)") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(shown, line, None, f"not valid UTF-8 ({exc.reason}, byte {exc.start} of the file)",
                        "save the file as UTF-8") from None


def _read_jsonl(source: Path, shown: str, compressed: bool) -> Iterator[RawRecord]:
    return (record for _, record in _jsonl_from(source, shown, compressed, (0, 0)))


def _jsonl_from(source: Path, shown: str, compressed: bool, point: Point) -> Iterator[tuple[Point, RawRecord]]:
    """Line by line, each decoded on its own, so an error names its own line; from byte `point[0]`, which is the
    start of line `point[1] + 1`."""
    offset, lineno = point
    try:
        with _open_binary(source, compressed) as handle:
            handle.seek(offset)
            for raw in handle:
                offset, lineno = offset + len(raw), lineno + 1
                data = _json_line(raw, lineno == 1)
                if data is not None:
                    yield (offset, lineno), RawRecord(shown, lineno, data)
    except (OSError, EOFError) as exc:
        raise DataError(shown, None, None, f"cannot read the file: {exc}", "check the file (re-compress it)") from None


def _json_line(raw: bytes, first: bool) -> Any:
    try:
        line = raw.decode("utf-8-sig" if first else "utf-8")
    except UnicodeDecodeError as exc:
        return Malformed(f"not valid UTF-8 ({exc.reason} at byte {exc.start} of the line)", "save the file as UTF-8")
    if not line.strip():
        return None
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        return Malformed(f"malformed JSON: {exc.msg} (column {exc.colno})",
                         "each line must be one complete JSON object")
    except RecursionError:
        return Malformed("JSON nested too deeply to read", "flatten the record")


def _read_json(source: Path, shown: str, compressed: bool) -> Iterator[RawRecord]:
    text = _read_all_text(source, shown, compressed)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(shown, exc.lineno, None, f"malformed JSON: {exc.msg} (column {exc.colno})",
                        "the file must be a JSON array of objects (or use .jsonl, one object per line)") from None
    except RecursionError:
        raise DataError(shown, None, None, "JSON nested too deeply to read", "flatten the records") from None
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


def _read_csv(source: Path, shown: str, compressed: bool, tabs: bool = False) -> Iterator[RawRecord]:
    return (record for _, record in _csv_from(source, shown, compressed, (0, 0), tabs))


def _csv_from(source: Path, shown: str, compressed: bool, point: Point,
              tabs: bool = False) -> Iterator[tuple[Point, RawRecord]]:
    """A header row, then a record a row, read a line at a time; from `point` = (rows read, lines read). Tab-separated
    files (GLUE's) quote nothing: a quote is text there."""
    handle = _open_binary(source, compressed)
    lines = _text_lines(handle, shown)
    reader = (csv.DictReader(lines, delimiter="\t", quoting=csv.QUOTE_NONE) if tabs else csv.DictReader(lines))
    rows = 0
    try:
        for row in reader:
            rows += 1
            if rows <= point[0]:
                continue
            if None in row or (tabs and None in row.values()):
                yield (rows, reader.line_num), RawRecord(shown, reader.line_num, Malformed(
                    f"{'more' if None in row else 'fewer'} values than header columns",
                    "give every row one value per column" + ("" if tabs else "; quote values that contain commas")))
                continue
            yield (rows, reader.line_num), RawRecord(shown, reader.line_num, dict(row))
    except csv.Error as exc:
        raise DataError(shown, reader.line_num, None, f"malformed {'TSV' if tabs else 'CSV'}: {exc}",
                        "fix the quoting on that line") from None
    finally:
        handle.close()


def _text_lines(handle: BinaryIO, shown: str) -> Iterator[str]:
    """The file's lines as text (a UTF-8 BOM dropped); a line that is not UTF-8 is named by its number."""
    try:
        for number, raw in enumerate(handle, 1):
            try:
                yield raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(shown, number, None, f"not valid UTF-8 ({exc.reason}, byte {exc.start} of the line)",
                                "save the file as UTF-8") from None
    except (OSError, EOFError) as exc:  # a truncated or corrupt .gz
        raise DataError(shown, None, None, f"cannot read the file: {exc}", "check the file (re-compress it)") from None


def _read_tsv(source: Path, shown: str, compressed: bool) -> Iterator[RawRecord]:
    return _read_csv(source, shown, compressed, tabs=True)


def _tsv_from(source: Path, shown: str, compressed: bool, point: Point) -> Iterator[tuple[Point, RawRecord]]:
    return _csv_from(source, shown, compressed, point, tabs=True)


def _read_conll(source: Path, shown: str, compressed: bool) -> Iterator[RawRecord]:
    """CoNLL column text (CoNLL-2003: `word POS chunk NER`): a sentence per block of lines, blank lines between,
    `-DOCSTART-` lines skipped; a record {tokens: the first column, tags: the last, column_1 ... the others}
    at the sentence's first line (`columns: {tags: column_2}` picks another tag column)."""
    lines = _read_all_text(source, shown, compressed).splitlines()
    sentence: list[list[str]] = []
    start = 0
    for number, line in enumerate([*lines, ""], 1):
        fields = line.split()
        if fields and fields[0] == "-DOCSTART-":
            continue
        if fields:
            if not sentence:
                start = number
            sentence.append(fields)
            continue
        if not sentence:
            continue
        widths = {len(f) for f in sentence}
        if len(widths) > 1 or min(widths) < 2:
            yield RawRecord(shown, start, Malformed(
                f"the sentence's lines have {sorted(widths)} columns", "give every line of a sentence the same "
                "columns: the word first, its tag last, separated by spaces or tabs"))
        else:
            columns = list(zip(*sentence, strict=True))
            yield RawRecord(shown, start, {"tokens": list(columns[0]), "tags": list(columns[-1]),
                                           **{f"column_{i}": list(c) for i, c in enumerate(columns[1:-1], 1)}})
        sentence = []


def _how_to_convert(kind: str) -> str:
    """What to do with a file type tuneforge does not read: how to convert it, or the supported type it is nearest
    to (a misspelt one)."""
    import difflib

    if kind in _CONVERT:
        return _CONVERT[kind]
    nearest = difflib.get_close_matches(kind, list(_READERS), n=1, cutoff=0.6)
    return ((f"did you mean {nearest[0]}? " if nearest else "") + "use .jsonl, .json, .csv, .tsv, .parquet, .conll "
            "(all but Parquet also gzipped, .jsonl.gz), or a directory written by datasets' save_to_disk")


# what to do with a file type tuneforge does not read
_CONVERT = {
    ".txt": "a .txt file: if it holds a word and its tags per line (CoNLL), name it .conll; plain text trains as JSON "
            "Lines of {\"text\": ...}",
    ".xlsx": "save the sheet as CSV (.csv) or tab-separated text (.tsv)",
    ".xls": "save the sheet as CSV (.csv) or tab-separated text (.tsv)",
    ".arrow": "give the directory datasets' save_to_disk wrote (it holds the .arrow files), or write Parquet",
    ".yaml": "a config is not data: write the records as JSON Lines (.jsonl)",
}


def _read_parquet(source: Path, shown: str, compressed: bool) -> Iterator[RawRecord]:
    return (record for _, record in _parquet_from(source, shown, compressed, (0, 0)))


def _parquet_from(source: Path, shown: str, compressed: bool, point: Point) -> Iterator[tuple[Point, RawRecord]]:
    """A row group at a time, from row `point[0]` (the row groups before it are not read)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(source)
        groups = [file.metadata.row_group(i).num_rows for i in range(file.num_row_groups)]
        first, row = 0, 0
        while first < len(groups) and row + groups[first] <= point[0]:
            row, first = row + groups[first], first + 1
        for group in range(first, len(groups)):
            for data in file.read_row_group(group).to_pylist():
                row += 1
                if row > point[0]:
                    yield (row, 0), RawRecord(shown, f"row {row - 1}", data)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(shown, None, None, f"cannot read Parquet: {exc}", "check the file is valid Parquet") from None


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


_READERS = {".jsonl": _read_jsonl, ".ndjson": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".tsv": _read_tsv,
            ".parquet": _read_parquet, ".conll": _read_conll}
_POSITIONED = {".jsonl": _jsonl_from, ".ndjson": _jsonl_from, ".csv": _csv_from, ".tsv": _tsv_from,
               ".parquet": _parquet_from}
