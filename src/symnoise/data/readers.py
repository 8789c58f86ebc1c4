"""Reading the raw rows of a data source, one at a time, without holding the parsed file in memory.

Local files (the types are listed in `symnoise.data.file_kinds`): ``.json`` (a list of objects; JSON Lines is
accepted too) and ``.jsonl`` (one object per line; a pretty-printed JSON array is accepted too, as NEFTune's
``alpaca-train.jsonl`` is one), both also gzip-compressed (``.json.gz``, ``.jsonl.gz``), read here; ``.parquet``,
``.arrow``, ``.csv``, ``.tsv`` and folders written by ``datasets``' ``save_to_disk``, read by
`symnoise.data.columnar`. Anything else is a Hugging Face dataset name read with `datasets.load_dataset`. JSON
Lines are read line by line and a JSON array element by element, so a large file costs its text (for an array)
and never a list of every parsed row. A file whose first bytes do not fit its name is refused naming both.

UTF-16 and UTF-32 files are refused with a message naming the encoding; a UTF-8 byte-order mark is accepted.
Undecodable bytes are kept as lone surrogates so the row holding them can be named later, instead of failing the
whole file.
"""

from __future__ import annotations

import codecs
import gzip
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..offline import (
    folder_listing,
    hub_dataset_cached,
    hub_endpoint,
    hub_offline,
    hub_problem,
    hub_reachable,
    hub_remedy,
    path_like_parent,
)
from .columnar import arrow_rows, delimited_rows, parquet_rows, saved_dataset_rows
from .conversations import BadRow
from .file_kinds import (
    FILE_SUFFIXES,
    SUFFIX_KINDS,
    SUPPORTED,
    content_mismatch,
    file_suffix,
    is_compressed,
    is_saved_dataset,
)

__all__ = ["FILE_SUFFIXES", "DataError", "RawRow", "check_hub_dataset", "local_path", "open_source"]
_WIDE_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32 (little-endian, with a byte-order mark)"),
    (codecs.BOM_UTF32_BE, "UTF-32 (big-endian, with a byte-order mark)"),
    (codecs.BOM_UTF16_LE, "UTF-16 (little-endian, with a byte-order mark)"),
    (codecs.BOM_UTF16_BE, "UTF-16 (big-endian, with a byte-order mark)"),
)


class DataError(ValueError):
    """A data source, or one of its rows, cannot be turned into training examples."""


@dataclass(frozen=True)
class RawRow:
    """A row as read from its source, before validation; `value` is a `BadRow` when it could not be parsed."""

    index: int
    line: int | None
    value: Any


def wide_encoding(head: bytes) -> str | None:
    """The name of a UTF-16/UTF-32 encoding the first bytes of a file show (by BOM or by zero bytes), or None."""
    for bom, name in _WIDE_BOMS:
        if head.startswith(bom):
            return name
    sample = head[:64]
    if len(sample) >= 4 and sample.count(0) >= len(sample) // 4:
        if sample[0] == 0 and sample[1] != 0:
            return "UTF-16 (big-endian, without a byte-order mark)"
        if sample[0] != 0 and sample[1] == 0:
            return "UTF-16 (little-endian, without a byte-order mark)"
    return None


def _check_encoding(path: Path, name: str) -> bool:
    """Refuses UTF-16/32 files with a message naming the encoding; True when the file starts with a UTF-8 BOM."""
    with _open(path, name) as handle:
        head = handle.read(64)
    wide = wide_encoding(head)
    if wide:
        raise DataError(
            f"{name}: the file is encoded as {wide}; symnoise reads UTF-8. Convert it, e.g. "
            f"iconv -f UTF-16 -t UTF-8 (or open and save it as UTF-8)"
        )
    return head.startswith(codecs.BOM_UTF8)


def _open(path: Path, name: str):
    """The file's bytes, decompressed when its name ends in .gz."""
    try:
        return gzip.open(path, "rb") if is_compressed(path) else path.open("rb")
    except OSError as error:
        raise DataError(f"{name}: cannot read the file: {error.strerror or error}") from None


def _decode_line(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="surrogateescape")


def _parse_line(line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as error:
        return BadRow("invalid JSON", f"not valid JSON at column {error.colno}: {error.msg}")
    except RecursionError:
        return BadRow("invalid JSON", "not readable JSON: nested too deeply")


def _json_lines_rows(path: Path, name: str) -> Iterator[RawRow]:
    """Rows of a JSON Lines file, read line by line; blank lines are ignored, an unparsable line is a bad row.

    Lines are split on "\\n" only: U+2028 and friends may legally appear inside JSON strings.
    """
    index = 0
    with _open(path, name) as handle:
        for line_number, raw in enumerate(handle, start=1):
            line = _decode_line(raw.rstrip(b"\n").removesuffix(b"\r"))
            if line_number == 1:
                line = line.removeprefix("\ufeff")
            if not line.strip():
                continue
            yield RawRow(index, line_number, _parse_line(line))
            index += 1


def _read_text(path: Path, name: str) -> tuple[str, int | None]:
    """The whole text of a file, and the byte offset of its first undecodable byte (None when all is valid)."""
    with _open(path, name) as handle:
        data = handle.read()
    try:
        text, bad_at = data.decode("utf-8"), None
    except UnicodeDecodeError as error:
        text, bad_at = data.decode("utf-8", errors="surrogateescape"), error.start
    return text.removeprefix("\ufeff"), bad_at


class _ChunkedText:
    """The text of a file read in chunks: a window `text` that starts `start` characters into the file, grown
    with `more()` and cut with `drop()`, so a large JSON array is never held whole."""

    CHUNK = 1 << 20

    def __init__(self, handle):
        self.handle = handle
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
        self.strict = codecs.getincrementaldecoder("utf-8")()  # only to find the first undecodable byte
        self.text = ""
        self.start = 0
        self.lines_before = 0  # newlines in the dropped text
        self.column_base = 0  # characters after the last dropped newline
        self.bad_at: int | None = None
        self.bytes_read = 0
        self.at_end = False

    def more(self) -> bool:
        """Reads another chunk into the window; False at the end of the file."""
        if self.at_end:
            return False
        data = self.handle.read(self.CHUNK)
        self.at_end = not data
        if self.bad_at is None:
            try:
                self.strict.decode(data, final=self.at_end)
            except UnicodeDecodeError as error:
                self.bad_at = max(0, self.bytes_read + error.start)
        self.bytes_read += len(data)
        text = self.decoder.decode(data, final=self.at_end)
        if self.start == 0 and not self.text:
            text = text.removeprefix("\ufeff")
        self.text += text
        return bool(data)

    def drop(self, upto: int) -> None:
        """Forgets the window's first `upto` characters."""
        dropped = self.text[:upto]
        newlines = dropped.count("\n")
        if newlines:
            self.lines_before += newlines
            self.column_base = len(dropped) - dropped.rfind("\n") - 1
        else:
            self.column_base += len(dropped)
        self.text = self.text[upto:]
        self.start += upto

    def error(self, name: str, message: str, position: int) -> DataError:
        """A whole-file error at `position` of the window, with the line and column in the file."""
        line = self.text.count("\n", 0, position)
        column = position - self.text.rfind("\n", 0, position) if line else position + 1 + self.column_base
        hint = f" (the file is not valid UTF-8 from byte {self.bad_at})" if self.bad_at is not None else ""
        return DataError(
            f"{name}: not valid JSON at line {self.lines_before + line + 1} column {column}: {message}{hint}"
        )

    def skip_space(self, position: int) -> int:
        """The first non-blank position from `position`, reading more as needed (len(text) at the end)."""
        while True:
            while position < len(self.text) and self.text[position] in " \t\r\n":
                position += 1
            if position < len(self.text) or not self.more():
                return position


def _json_array_rows(path: Path, name: str) -> Iterator[RawRow]:
    """Rows of a file holding one JSON array, decoded element by element from chunks of the file; a malformed
    file is a whole-file error with its line and column."""
    decoder = json.JSONDecoder()
    with _open(path, name) as handle:
        window = _ChunkedText(handle)
        position = window.skip_space(0)
        if window.text[position : position + 1] != "[":
            raise window.error(name, "expected a JSON array", position)
        position = window.skip_space(position + 1)
        index = 0
        if window.text[position : position + 1] == "]":
            _expect_end(window, position + 1, name)
            return
        while True:
            value, position = _decode_element(window, decoder, position, name)
            yield RawRow(index, None, value)
            index += 1
            position = window.skip_space(position)
            separator = window.text[position : position + 1]
            if separator == "]":
                _expect_end(window, position + 1, name)
                return
            if separator != ",":
                raise window.error(name, "Expecting ',' delimiter", position)
            window.drop(position + 1)
            position = window.skip_space(0)


def _decode_element(
    window: _ChunkedText, decoder: json.JSONDecoder, position: int, name: str
) -> tuple[Any, int]:
    """The JSON value at `position`, reading more of the file while the value is cut by the window's end."""
    while True:
        try:
            value, end = decoder.raw_decode(window.text, position)
            if end < len(window.text) or not window.more():  # a number at the window's end may go on
                return value, end
        except json.JSONDecodeError as error:
            if not window.more():
                raise window.error(name, error.msg, error.pos) from None
        except RecursionError:
            raise DataError(f"{name}: not readable JSON: nested too deeply") from None


def _expect_end(window: _ChunkedText, position: int, name: str) -> None:
    position = window.skip_space(position)
    if position < len(window.text):
        raise window.error(name, "Extra data", position)


HEAD_BYTES = 1 << 16


def _first_line(path: Path, name: str) -> tuple[str, bool]:
    """The first non-blank line of a text file (BOM removed; "" for a blank file), read from at most the first
    64 KiB, and whether it ended there (a minified JSON array is one long line, never read whole here)."""
    with _open(path, name) as handle:
        head = handle.read(HEAD_BYTES)
        at_end = len(head) < HEAD_BYTES
    text = head.decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")
    for line in text.split("\n")[:-1] if not at_end else text.split("\n"):
        if line.strip():
            return line.strip(), True
    stripped = text.split("\n")[-1].strip()
    return stripped, not stripped


def _text_file_rows(path: Path, name: str) -> Iterator[RawRow]:
    """Rows of a .json or .jsonl file, whichever of the two layouts it actually uses: a JSON array when the file
    starts with "[" and is named .json or its first line is not a complete JSON value, JSON Lines otherwise."""
    _check_encoding(path, name)
    first, complete = _first_line(path, name)
    if not first:
        raise DataError(f"{name}: the file is empty")
    first_is_json = complete and not isinstance(_parse_line(first), BadRow)
    is_json = file_suffix(path) in (".json", ".json.gz")
    if first.startswith("[") and (is_json or (complete and not first_is_json)):
        return _json_array_rows(path, name)
    if is_json and complete and not first_is_json and first.startswith("{"):
        text, _ = _read_text(path, name)
        try:
            whole = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            whole = None
        if isinstance(whole, dict):
            raise DataError(f"{name}: the top level is a JSON object, expected a list of records")
    return _json_lines_rows(path, name)


def _gzip_rows(path: Path, name: str) -> Iterator[RawRow]:
    """The rows of a gzip-compressed .json or .jsonl file; a damaged archive is a whole-file error."""
    try:
        yield from _text_file_rows(path, name)
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise DataError(f"{name}: not a readable gzip file: {type(error).__name__}: {error}") from None


def _numbered(values: Iterator[Any]) -> Iterator[RawRow]:
    return (RawRow(index, None, value) for index, value in enumerate(values))


def check_hub_dataset(name: str, split: str) -> None:
    """A hub dataset that is in no local cache needs the hub: say at once when ``HF_HUB_OFFLINE`` forbids it or
    the hub does not answer (``datasets`` itself retries for about 20 s before failing)."""
    repo = "/".join(name.removeprefix("hf://datasets/").split("/")[:2])
    if hub_dataset_cached(repo):
        return
    parent = None if name.startswith("hf://") else path_like_parent(name)
    if parent is not None:
        _check_path_like_source(name, parent)
        return
    where = f"dataset '{name}' (split '{split}') is not a local file and is not in the Hugging Face cache"
    if hub_offline(datasets=True):
        raise DataError(
            f"{where}, and HF_HUB_OFFLINE (or HF_DATASETS_OFFLINE) is set, so it cannot be "
            "downloaded; unset it, or give a local file"
        )
    problem = hub_reachable()
    if problem is not None:
        raise DataError(
            f"{where}, and {hub_endpoint()} cannot be reached ({problem}); connect to the network, "
            "or give a local file"
        )


def _check_path_like_source(name: str, parent: Path) -> None:
    """``data/my-set`` beside a ``data/`` folder is most likely a mistyped path: when the hub cannot be asked
    either, the missing local file is named first, then the hub."""
    problem = hub_problem(datasets=True)
    if problem is not None:
        raise DataError(
            f"there is no local file or folder {name} ({folder_listing(parent)}), and '{name}' is not a hub "
            f"dataset in the Hugging Face cache, which cannot be downloaded now: {problem}. If it is a local "
            f"file, correct the path (symnoise reads {SUPPORTED}); if it is a hub dataset, {hub_remedy(problem)}"
        )


def _hub_builder(name: str) -> tuple[str, dict]:
    """The ``datasets`` builder, and its arguments, for one file of a hub dataset repository, by its name."""
    kind = SUFFIX_KINDS.get(file_suffix(Path(name)), "json")
    if kind in ("csv", "tsv"):
        return "csv", {"delimiter": "\t" if kind == "tsv" else ","}
    return kind, {}


def _hub_rows(name: str, split: str) -> Iterator[RawRow]:
    """Rows of a Hugging Face dataset, by name or as one file of a dataset repository
    (``hf://datasets/OWNER/NAME/FILE.json``); any failure to load it becomes one clear DataError."""
    check_hub_dataset(name, split)
    try:
        import datasets

        if name.startswith("hf://"):  # one file inside a hub dataset repository
            builder, arguments = _hub_builder(name)
            dataset = datasets.load_dataset(builder, data_files=name, split="train", **arguments)
        else:
            dataset = datasets.load_dataset(name, split=split)
    except Exception as error:  # network, auth, missing split, bad name: all mean "could not load"
        reason = str(error).strip().splitlines()[0] if str(error).strip() else "no details"
        parent = None if name.startswith("hf://") else path_like_parent(name)
        local = (
            f" There is no local file or folder {name} either ({folder_listing(parent)})." if parent else ""
        )
        raise DataError(
            f"could not load dataset '{name}' (split '{split}') from the Hugging Face hub: "
            f"{type(error).__name__}: {reason}.{local} symnoise reads local {SUPPORTED}."
        ) from None
    return _numbered(iter(dataset))


def local_path(source: str) -> Path | None:
    """The local file or ``save_to_disk`` folder `source` names, or None when it is a hub dataset; a DataError
    for a bad local path."""
    if source.startswith("hf://"):
        return None
    path = Path(source).expanduser()
    suffix = file_suffix(path)
    if path.is_dir():
        if is_saved_dataset(path):
            return path
        raise DataError(
            f"{source}: is a directory but not a dataset saved with datasets' save_to_disk (it has neither "
            f"dataset_info.json with state.json nor dataset_dict.json); give one of: {SUPPORTED}; or a hub "
            "dataset name"
        )
    if path.exists():
        if suffix not in FILE_SUFFIXES:
            raise DataError(f"{source}: unsupported file type '{suffix}'; symnoise reads {SUPPORTED}")
        return path
    if suffix in FILE_SUFFIXES or source.startswith(("/", ".", "~")):
        raise DataError(f"{source}: file not found")
    return None


def _check_content(path: Path, name: str) -> None:
    """The first bytes of a file must fit its name (JSON named .parquet is refused naming both)."""
    with path.open("rb") as handle:  # the bytes as stored: a .gz file must start as gzip
        head = handle.read(64)
    mismatch = content_mismatch(path, head)
    if mismatch:
        raise DataError(f"{name}: {mismatch}")


def open_source(source: str, split: str) -> Iterator[RawRow]:
    """The raw rows of a local file or ``save_to_disk`` folder or, when `source` is not a path, of a hub
    dataset."""
    path = local_path(source)
    if path is None:
        return _hub_rows(source, split)
    if path.is_dir():
        return _numbered(saved_dataset_rows(path, source, split, DataError))
    try:
        _check_content(path, source)
    except OSError as error:
        raise DataError(f"{source}: cannot read the file: {error.strerror or error}") from None
    kind = SUFFIX_KINDS[file_suffix(path)]
    if kind == "parquet":
        return _numbered(parquet_rows(path, source, DataError))
    if kind == "arrow":
        return _numbered(arrow_rows(path, source, DataError))
    if kind in ("csv", "tsv"):
        _check_encoding(path, source)
        return _numbered(delimited_rows(path, source, "," if kind == "csv" else "\t", DataError))
    return _gzip_rows(path, source) if is_compressed(path) else _text_file_rows(path, source)
