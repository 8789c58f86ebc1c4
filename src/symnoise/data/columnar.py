"""Rows of the files that are not JSON text: Parquet and Arrow (pyarrow, one record batch at a time), CSV and TSV
(``datasets``' csv builder, streamed, every cell read as text), and folders written by ``datasets``'
``save_to_disk`` (memory-mapped, read in batches).

Each function yields the rows as dicts, the values the JSON readers give for the same data, so every row goes
through the same checks and is named by its number. A file that cannot be read at all raises the caller's
``error`` type with the file's name, when it is opened where possible, else at the row where reading stopped.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BATCH_ROWS = 4096
# datasets' csv builder logs a parser error before raising it; the raised error is reported here, once, naming
# the file, so its log line would only repeat it
_CSV_BUILDER_LOGGER = "datasets.packaged_modules.csv.csv"


def _unreadable(error: type[Exception], name: str, what: str, cause: BaseException) -> Exception:
    reason = str(cause).strip().splitlines()[0] if str(cause).strip() else "no details"
    return error(f"{name}: not a readable {what}: {type(cause).__name__}: {reason}")


def _guarded(rows: Iterator[Any], first: Any, name: str, what: str, error: type[Exception]) -> Iterator[Any]:
    """``first`` and then the rest of ``rows``; a failure while reading on (a corrupt later part) is ``error``."""
    item = first
    while item is not None:
        yield item
        try:
            item = next(rows, None)
        except Exception as cause:  # the libraries raise many unrelated types for damaged files
            raise _unreadable(error, name, what, cause) from None


def _batch_rows(batches: Iterator[Any], name: str, what: str, error: type[Exception]) -> Iterator[dict]:
    """The rows of an iterator of pyarrow record batches or tables."""
    try:
        first = next(batches, None)
    except Exception as cause:
        raise _unreadable(error, name, what, cause) from None
    for batch in _guarded(batches, first, name, what, error):
        yield from batch.to_pylist()


def parquet_rows(path: Path, name: str, error: type[Exception]) -> Iterator[dict]:
    """Rows of a Parquet file, read one record batch at a time."""
    try:
        import pyarrow.parquet as pq

        batches = pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS)
    except Exception as cause:
        raise _unreadable(error, name, "Parquet file", cause) from None
    return _batch_rows(batches, name, "Parquet file", error)


def arrow_rows(path: Path, name: str, error: type[Exception]) -> Iterator[dict]:
    """Rows of an Arrow IPC file, in the file format (``ARROW1``) or the stream format ``datasets`` writes."""
    import pyarrow as pa

    try:
        source = pa.memory_map(str(path))
        try:
            reader = pa.ipc.open_file(source)
            batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
        except pa.ArrowInvalid:
            source.seek(0)
            batches = iter(pa.ipc.open_stream(source))
    except Exception as cause:
        raise _unreadable(error, name, "Arrow file", cause) from None
    return _batch_rows(batches, name, "Arrow file", error)


def _header(path: Path, name: str, delimiter: str, what: str, error: type[Exception]) -> list[str]:
    """The column names of a delimited file; empty, blank or repeated names are an error naming them."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            header = next(csv.reader(handle, delimiter=delimiter), None)
    except (OSError, UnicodeDecodeError, csv.Error) as cause:
        raise _unreadable(error, name, what, cause) from None
    if not header:
        raise error(f"{name}: the file is empty (expected a header line naming the columns)")
    repeated = sorted({column for column in header if header.count(column) > 1})
    if repeated or not all(column.strip() for column in header):
        problem = f"repeats {', '.join(map(repr, repeated))}" if repeated else "has a blank column name"
        raise error(f"{name}: the header line {problem}; every column needs its own name")
    return header


def delimited_rows(path: Path, name: str, delimiter: str, error: type[Exception]) -> Iterator[dict]:
    """Rows of a CSV or TSV file with a header line, streamed by ``datasets``' csv builder (nothing is cached).

    Every cell is read as text, as written: ``3`` stays ``"3"``, ``1.50`` keeps its zero, an empty cell is ``""``
    (type inference would turn an Alpaca answer "3" into a number and an empty input into a NaN)."""
    what = "CSV file" if delimiter == "," else "TSV file"
    header = _header(path, name, delimiter, what, error)
    import datasets

    logging.getLogger(_CSV_BUILDER_LOGGER).setLevel(logging.CRITICAL)
    features = datasets.Features({column: datasets.Value("string") for column in header})
    try:
        dataset = datasets.load_dataset(
            "csv",
            data_files=str(path),
            split="train",
            streaming=True,
            delimiter=delimiter,
            features=features,
            keep_default_na=False,
            encoding="utf-8-sig",
        )
        rows = iter(dataset)
        first = next(rows, None)
    except Exception as cause:  # pandas' parser errors, datasets' own wrappers
        raise _unreadable(error, name, what, cause) from None
    if first is None:
        raise error(f"{name}: contains no rows (only a header line)")
    return _guarded(rows, first, name, what, error)


def saved_dataset_rows(path: Path, name: str, split: str, error: type[Exception]) -> Iterator[dict]:
    """Rows of a folder written by ``save_to_disk``: a ``Dataset``, or the ``split`` of a ``DatasetDict``."""
    import datasets

    what = "folder written by datasets' save_to_disk"
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as cause:
        raise _unreadable(error, name, what, cause) from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise error(
                f"{name}: has no split '{split}'; its splits are {', '.join(sorted(loaded))} (set data.split)"
            )
        loaded = loaded[split]
    return _batch_rows(iter(loaded.with_format("arrow").iter(batch_size=BATCH_ROWS)), name, what, error)
