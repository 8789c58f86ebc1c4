"""Loading instruction-tuning data and normalising every row to one `Example`.

Four row formats are understood, all reduced to (instruction, input, output):

- ``alpaca``: ``instruction``, ``input`` (optional), ``output``;
- ``openplatypus``: the same keys plus bookkeeping keys such as ``data_source`` (ignored);
- ``evol-instruct``: ``instruction`` and ``output``, or ShareGPT-style ``conversations``;
- ``sharegpt``: ``conversations``, a list of ``{"from", "value"}`` turns, of which the papers use a single turn:
  the first human turn and the assistant turn right after it.

Sources are local ``.json`` (a list of objects; JSON Lines is accepted too), ``.jsonl`` (one object per line;
a pretty-printed JSON array is accepted too, as NEFTune's ``alpaca-train.jsonl`` is one), ``.parquet``, or a Hugging Face dataset
name read with `datasets.load_dataset`. Every problem surfaces as a `DataError` that names the source, the row
(0-based, plus the line for JSON Lines) and the field, so a bad row in a 70k-row file can be found and fixed.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path
from typing import Any

FORMATS = ("alpaca", "sharegpt", "evol-instruct", "openplatypus")
BAD_ROW_POLICIES = ("error", "skip")
FILE_SUFFIXES = (".json", ".jsonl", ".parquet")
HUMAN_ROLES = frozenset({"human", "user"})
ASSISTANT_ROLES = frozenset({"gpt", "assistant", "chatgpt", "bard"})
SYSTEM_ROLES = frozenset({"system"})
DETECTION_ROWS = 100

_FORMAT_KEYS = {
    "alpaca": "instruction, input, output",
    "sharegpt": "conversations",
    "evol-instruct": "instruction, output (or conversations)",
    "openplatypus": "instruction, input, output, data_source",
}


class DataError(ValueError):
    """A data source, or one of its rows, cannot be turned into training examples."""


@dataclass(frozen=True)
class Example:
    """One single-turn instruction example, whatever format it came from.

    `source` locates the row ("train.json:row 12") so later stages can point back at it in messages.
    """

    instruction: str
    input: str
    output: str
    source: str


@dataclass
class LoadReport:
    """What `load_examples` read: rows seen, examples kept, and why the others were skipped."""

    source: str
    format: str
    n_rows: int = 0
    n_loaded: int = 0
    skipped: Counter = field(default_factory=Counter)

    def skipped_summary(self) -> str:
        """'skipped 3 rows: 2 empty output, 1 missing instruction', or '' when nothing was skipped."""
        total = sum(self.skipped.values())
        if not total:
            return ""
        reasons = ", ".join(f"{count} {reason}" for reason, count in self.skipped.most_common())
        return f"skipped {total} row{'s' if total != 1 else ''}: {reasons}"

    def summary(self) -> str:
        """One line for logs: how many examples were loaded from where, in which format."""
        line = f"loaded {self.n_loaded} of {self.n_rows} rows from {self.source} (format {self.format})"
        skipped = self.skipped_summary()
        return f"{line}; {skipped}" if skipped else line


class _BadRow(Exception):
    """A row-level problem: `reason` is short and countable ("empty output"), `detail` explains it."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class _RawRow:
    """A row as read from its source, before validation; `value` is a `_BadRow` when it could not be parsed."""

    index: int
    line: int | None
    value: Any


# ---------------------------------------------------------------------------------------------- reading


def _decode(data: bytes) -> tuple[str, int | None]:
    """UTF-8 text of a file, and the byte offset of the first undecodable byte (None when all is valid).

    Undecodable bytes are kept as lone surrogates so the row holding them can be named later, instead of
    failing the whole file.
    """
    try:
        text, bad_at = data.decode("utf-8"), None
    except UnicodeDecodeError as error:
        text, bad_at = data.decode("utf-8", errors="surrogateescape"), error.start
    return text.removeprefix("\ufeff"), bad_at


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise DataError(f"{path}: cannot read the file: {error.strerror or error}") from None


def _json_array_rows(text: str, name: str, bad_at: int | None) -> list[_RawRow]:
    """Rows of a file holding one JSON array of objects; a malformed file is a whole-file error."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        hint = f" (the file is not valid UTF-8 from byte {bad_at})" if bad_at is not None else ""
        raise DataError(
            f"{name}: not valid JSON at line {error.lineno} column {error.colno}: {error.msg}{hint}"
        ) from None
    except RecursionError:
        raise DataError(f"{name}: not readable JSON: nested too deeply") from None
    if not isinstance(data, list):
        raise DataError(
            f"{name}: the top level is a JSON {type(data).__name__}, expected a list of records "
            "(or JSON Lines, one record per line)"
        )
    return [_RawRow(index, None, value) for index, value in enumerate(data)]


def _json_lines_rows(text: str) -> list[_RawRow]:
    """Rows of a JSON Lines text; blank lines are ignored, an unparsable line becomes a bad row.

    Lines are split on "\\n" only: U+2028 and friends may legally appear inside JSON strings.
    """
    rows = []
    for line_number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        try:
            value: Any = json.loads(line)
        except json.JSONDecodeError as error:
            value = _BadRow("invalid JSON", f"not valid JSON at column {error.colno}: {error.msg}")
        except RecursionError:
            value = _BadRow("invalid JSON", "not readable JSON: nested too deeply")
        rows.append(_RawRow(len(rows), line_number, value))
    return rows


def _text_file_rows(path: Path, name: str) -> list[_RawRow]:
    """Rows of a .json or .jsonl file, whichever of the two layouts it actually uses."""
    text, bad_at = _decode(_read_bytes(path))
    stripped = text.lstrip()
    if not stripped:
        raise DataError(f"{name}: the file is empty")
    if stripped.startswith("[") and (path.suffix.lower() == ".json" or not _first_line_is_json(stripped)):
        return _json_array_rows(text, name, bad_at)
    if path.suffix.lower() == ".json" and "\n" in stripped.rstrip():
        single = _single_json_value(text)
        if isinstance(single, dict):
            raise DataError(f"{name}: the top level is a JSON object, expected a list of records")
    return _json_lines_rows(text)


def _first_line_is_json(text: str) -> bool:
    """Whether the first line parses on its own, as in JSON Lines (a pretty-printed array's "[" does not)."""
    try:
        json.loads(text.split("\n", 1)[0])
    except (json.JSONDecodeError, RecursionError):
        return False
    return True


def _single_json_value(text: str) -> Any:
    """The file parsed as one JSON document, or None when it is not one (e.g. JSON Lines)."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return None


def _parquet_rows(path: Path, name: str) -> list[_RawRow]:
    try:
        import pyarrow.parquet as pq

        records = pq.read_table(path).to_pylist()
    except Exception as error:  # pyarrow raises several unrelated types for unreadable files
        raise DataError(f"{name}: not a readable Parquet file: {type(error).__name__}: {error}") from None
    return [_RawRow(index, None, value) for index, value in enumerate(records)]


def _hub_rows(name: str, split: str) -> Iterator[_RawRow]:
    """Rows of a Hugging Face dataset, by name or as one file of a dataset repository
    (``hf://datasets/OWNER/NAME/FILE.json``); any failure to load it becomes one clear DataError."""
    try:
        import datasets

        if name.startswith("hf://"):  # one file inside a hub dataset repository
            builder = "parquet" if name.lower().endswith(".parquet") else "json"
            dataset = datasets.load_dataset(builder, data_files=name, split="train")
        else:
            dataset = datasets.load_dataset(name, split=split)
    except Exception as error:  # network, auth, missing split, bad name: all mean "could not load"
        reason = str(error).strip().splitlines()[0] if str(error).strip() else "no details"
        raise DataError(
            f"could not load dataset '{name}' (split '{split}') from the Hugging Face hub: "
            f"{type(error).__name__}: {reason}. A local file must end in {', '.join(FILE_SUFFIXES)}."
        ) from None
    return (_RawRow(index, None, value) for index, value in enumerate(dataset))


def _open_source(source: str, split: str) -> Iterable[_RawRow]:
    """The raw rows of a local file or, when `source` is not a path, of a hub dataset."""
    if source.startswith("hf://"):
        return _hub_rows(source, split)
    path = Path(source).expanduser()
    suffix = path.suffix.lower()
    if path.is_dir():
        raise DataError(f"{source}: is a directory; give a {', '.join(FILE_SUFFIXES)} file or a hub dataset name")
    if path.exists():
        if suffix == ".parquet":
            return _parquet_rows(path, source)
        if suffix in (".json", ".jsonl"):
            return _text_file_rows(path, source)
        raise DataError(f"{source}: unsupported file type '{suffix}'; expected one of {', '.join(FILE_SUFFIXES)}")
    if suffix in FILE_SUFFIXES or source.startswith(("/", ".", "~")):
        raise DataError(f"{source}: file not found")
    return _hub_rows(source, split)


# ------------------------------------------------------------------------------------- format detection


def format_of_keys(keys: Iterable[str]) -> str | None:
    """The format a row with these keys belongs to, or None when no format fits."""
    keys = set(keys)
    if "conversations" in keys:
        return "sharegpt"
    if {"instruction", "output"} <= keys:
        if "data_source" in keys:
            return "openplatypus"
        return "alpaca" if "input" in keys else "evol-instruct"
    return None


def _detect_format(head: list[_RawRow], name: str) -> str:
    """The format of the first row in `head` whose keys fit one; a DataError listing the keys otherwise."""
    keys_seen: set[str] = set()
    for row in head:
        if isinstance(row.value, dict):
            keys = [str(key) for key in row.value]
            detected = format_of_keys(keys)
            if detected:
                return detected
            keys_seen.update(keys)
    if not head:
        raise DataError(f"{name}: contains no rows")
    if not keys_seen:
        raise DataError(f"{name}: cannot detect the format: the first {len(head)} rows are not JSON objects")
    allowed = "; ".join(f"{fmt} ({keys})" for fmt, keys in _FORMAT_KEYS.items())
    raise DataError(
        f"{name}: cannot detect the data format from the keys {sorted(keys_seen)}; "
        f"known formats: {allowed}. Pass format= to force one."
    )


# ------------------------------------------------------------------------------------- row normalising


def _check_text(value: str, where: str) -> None:
    """Rejects text that cannot be encoded as UTF-8 (undecodable bytes in the file, lone surrogates)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise _BadRow(
            "invalid UTF-8", f"field '{where}' is not valid UTF-8 text (bad character at position {error.start})"
        ) from None


def _string_field(row: dict, key: str, where: str | None = None) -> str | None:
    """`row[key]` as a string; None when absent or null; a bad row when it has another type."""
    where = where or key
    value = row.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _BadRow(f"non-string {key}", f"field '{where}' must be a string, got {type(value).__name__}")
    _check_text(value, where)
    return value


def _required_text(row: dict, key: str, where: str | None = None) -> str:
    """A string field that must be present and not blank (whitespace only counts as empty)."""
    where = where or key
    value = _string_field(row, key, where)
    if value is None and key in row:
        raise _BadRow(f"null {key}", f"field '{where}' is null; it must be a non-empty string")
    if value is None:
        raise _BadRow(f"missing {key}", f"field '{where}' is missing")
    if not value.strip():
        raise _BadRow(f"empty {key}", f"field '{where}' is empty or whitespace only")
    return value


def _instruction_fields(row: dict) -> tuple[str, str, str]:
    """(instruction, input, output) of an Alpaca / Open-Platypus / Evol-Instruct row; other keys are ignored."""
    instruction = _required_text(row, "instruction")
    input_ = _string_field(row, "input") or ""
    output = _required_text(row, "output")
    return instruction, input_, output


def _turn(turns: list, position: int) -> tuple[str, dict]:
    """The lower-cased role and the turn object at `position`, validated."""
    where = f"conversations[{position}]"
    turn = turns[position]
    if not isinstance(turn, dict):
        raise _BadRow("bad turn", f"field '{where}' must be an object with 'from' and 'value'")
    role = _string_field(turn, "from", f"{where}.from")
    if role is None:
        raise _BadRow("missing turn role", f"field '{where}.from' is missing")
    role = role.strip().lower()
    if role not in HUMAN_ROLES | ASSISTANT_ROLES | SYSTEM_ROLES:
        known = sorted(HUMAN_ROLES | ASSISTANT_ROLES | SYSTEM_ROLES)
        raise _BadRow("unknown turn role", f"field '{where}.from' is '{role}', expected one of {known}")
    return role, turn


def _conversation_fields(row: dict) -> tuple[str, str, str]:
    """(first human turn, "", the assistant turn right after it) of a ShareGPT-style row.

    Turns before the first human turn (a system prompt, or an assistant turn left over from splitting a long
    conversation) are skipped; later turns are not used and so not checked.
    """
    turns = row.get("conversations")
    if turns is None:
        raise _BadRow("missing conversations", "field 'conversations' is missing")
    if not isinstance(turns, list):
        raise _BadRow(
            "non-list conversations", f"field 'conversations' must be a list, got {type(turns).__name__}"
        )
    for position in range(len(turns)):
        role, turn = _turn(turns, position)
        if role in HUMAN_ROLES:
            instruction = _required_text(turn, "value", f"conversations[{position}].value")
            if position + 1 >= len(turns):
                raise _BadRow("no reply", f"field 'conversations' has no turn after the human turn {position}")
            reply_role, reply = _turn(turns, position + 1)
            if reply_role not in ASSISTANT_ROLES:
                raise _BadRow(
                    "no reply",
                    f"field 'conversations[{position + 1}].from' is '{reply_role}', expected an assistant turn",
                )
            output = _required_text(reply, "value", f"conversations[{position + 1}].value")
            return instruction, "", output
    raise _BadRow("no human turn", "field 'conversations' has no human turn")


def _row_fields(value: Any, format: str) -> tuple[str, str, str]:
    """(instruction, input, output) of one parsed row in the given format, or a `_BadRow`."""
    if isinstance(value, _BadRow):
        raise value
    if not isinstance(value, dict):
        raise _BadRow("not an object", f"the row is a JSON {type(value).__name__}, expected an object")
    if format == "sharegpt" or (format == "evol-instruct" and "conversations" in value):
        return _conversation_fields(value)
    return _instruction_fields(value)


def _row_name(name: str, row: _RawRow) -> str:
    line = f" (line {row.line})" if row.line is not None else ""
    return f"{name}:row {row.index}{line}"


# ---------------------------------------------------------------------------------------------- public


def default_template(format: str) -> str:
    """The prompt template the papers use with a data format: Vicuna v1.1 for ShareGPT, Alpaca for the rest."""
    if format not in FORMATS:
        raise DataError(f"unknown data format '{format}'; expected one of {', '.join(FORMATS)}")
    return "vicuna" if format == "sharegpt" else "alpaca"


def _check_arguments(format: str, on_bad_row: str, limit: int | None) -> None:
    if format != "auto" and format not in FORMATS:
        raise DataError(f"unknown data format '{format}'; expected auto or one of {', '.join(FORMATS)}")
    if on_bad_row not in BAD_ROW_POLICIES:
        raise DataError(f"on_bad_row must be one of {', '.join(BAD_ROW_POLICIES)}, got '{on_bad_row}'")
    if limit is not None and limit < 1:
        raise DataError(f"limit must be a positive number of examples, got {limit}")


def load_examples(
    source: str,
    format: str = "auto",
    on_bad_row: str = "error",
    split: str = "train",
    limit: int | None = None,
) -> tuple[list[Example], LoadReport]:
    """Reads `source` and returns its examples with a report of what was read.

    `source` is a local .json / .jsonl / .parquet file or a Hugging Face dataset name (loaded with
    `datasets.load_dataset(source, split=split)`). `format` is detected from the keys of the first rows
    unless given. A bad row raises a `DataError` naming source, row and field, or, with
    ``on_bad_row="skip"``, is skipped and counted in the report. `limit` stops after that many examples.
    Finding no usable example at all is a `DataError` too.
    """
    _check_arguments(format, on_bad_row, limit)
    rows = iter(_open_source(source, split))
    head = list(islice(rows, DETECTION_ROWS))
    detected = _detect_format(head, source) if format == "auto" else format
    report = LoadReport(source=source, format=detected)
    examples: list[Example] = []
    for row in chain(head, rows):
        if limit is not None and len(examples) >= limit:
            break
        report.n_rows += 1
        where = _row_name(source, row)
        try:
            instruction, input_, output = _row_fields(row.value, detected)
        except _BadRow as bad:
            if on_bad_row == "error":
                raise DataError(f"{where}: {bad.detail}") from None
            report.skipped[bad.reason] += 1
            continue
        examples.append(Example(instruction, input_, output, where))
    report.n_loaded = len(examples)
    if not report.n_rows:
        raise DataError(f"{source}: contains no rows")
    if not examples:
        raise DataError(f"{source}: no usable examples in {report.n_rows} rows; {report.skipped_summary()}")
    return examples, report
