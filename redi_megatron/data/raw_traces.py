"""Reading raw teacher rows (OpenR1-Math-Raw schema) from JSONL, Parquet or a saved ``datasets`` folder.

Reading never raises on bad content: a line that is not UTF-8 or not a JSON object comes back as a
``RawRow`` with ``error`` set, so the caller can count it (with its row number) and go on.
"""

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
_PARQUET_SUFFIXES = (".parquet",)


@dataclass(frozen=True)
class RawRow:
    """One input record: ``row`` is 1-based over the whole input (JSONL: the line number)."""

    row: int
    record: dict | None
    error: str | None = None
    file: str = ""


def read_raw_rows(path: str | Path) -> Iterator[RawRow]:
    """Yield every record of a JSONL / Parquet file, a ``save_to_disk`` folder, or a folder of files."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input not found: {path}")
    if path.is_dir():
        yield from _read_directory(path)
    else:
        yield from _numbered(_read_file(path))


def _read_directory(path: Path) -> Iterator[RawRow]:
    """Yield the rows of a ``datasets`` folder, or of its JSONL/Parquet files in name order."""
    if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
        yield from _numbered(_read_saved_dataset(path))
        return
    files = sorted(p for p in path.rglob("*") if p.suffix in _JSONL_SUFFIXES + _PARQUET_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no .jsonl/.parquet files and no saved dataset in {path}")
    yield from _numbered(row for file in files for row in _read_file(file))


def _numbered(rows: Iterator[RawRow]) -> Iterator[RawRow]:
    """Renumber rows 1..N across files so a row number is unique for the whole input."""
    for number, row in enumerate(rows, start=1):
        yield RawRow(number, row.record, row.error, row.file)


def _read_file(path: Path) -> Iterator[RawRow]:
    if path.suffix in _PARQUET_SUFFIXES:
        return _read_parquet(path)
    if path.suffix in _JSONL_SUFFIXES:
        return _read_jsonl(path)
    raise ValueError(f"unsupported input file {path}: expected .jsonl, .json, .ndjson or .parquet")


def _read_jsonl(path: Path) -> Iterator[RawRow]:
    """Yield one RawRow per line; blank lines are rows too, flagged, so numbering stays line numbers."""
    with open(path, "rb") as handle:
        for line in handle:
            yield _parse_line(line, str(path))


def _parse_line(line: bytes, file: str) -> RawRow:
    if not line.strip():
        return RawRow(0, None, "blank_line", file)
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return RawRow(0, None, "non_utf8", file)
    try:
        record = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return RawRow(0, None, "malformed_json", file)
    if not isinstance(record, dict):
        return RawRow(0, None, "not_an_object", file)
    return RawRow(0, record, None, file)


def _read_parquet(path: Path) -> Iterator[RawRow]:
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(batch_size=256):
        for record in batch.to_pylist():
            yield RawRow(0, record, None, str(path))


def _read_saved_dataset(path: Path) -> Iterator[RawRow]:
    """Yield the rows of ``datasets.save_to_disk`` output (every split, in name order)."""
    import datasets

    loaded = datasets.load_from_disk(str(path))
    splits = [loaded[name] for name in sorted(loaded)] if isinstance(loaded, datasets.DatasetDict) else [loaded]
    for split in splits:
        for record in split:
            yield RawRow(0, record, None, str(path))
