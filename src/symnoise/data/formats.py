"""Loading instruction-tuning data and normalising every row to an `Example` or a `Conversation`.

Formats, auto-detected from the keys of the first rows or forced with ``format=``:

- ``alpaca``: ``instruction``, ``input`` (optional), ``output``;
- ``openplatypus``: the same keys plus bookkeeping keys such as ``data_source`` (ignored);
- ``evol-instruct``: ``instruction`` and ``output``, or ShareGPT-style ``conversations``;
- ``dolly``: ``instruction``, ``context`` (optional, becomes the input), ``response`` (or ``output``);
- ``sharegpt``: ``conversations``, a list of turns ``{"from", "value"}`` (or ``{"role", "content"}``);
- ``messages``: ``messages``, a list of chat messages ``{"role", "content"}`` (TRL, axolotl, OpenAssistant);
- ``prompt-completion``: ``prompt`` and ``completion``, both text (TRL's "standard" rows: the prompt is used as
  is, the completion is trained) or both lists of messages (TRL's "conversational" rows).

Instruction rows become an `Example` (instruction, input, output). Conversational rows become a `Conversation`
(`symnoise.data.conversations`): every exchange, or only the first one with ``turns="first"`` (the papers'
single-turn ShareGPT protocol). Every problem surfaces as a `DataError` that names the source, the row (0-based,
plus the line for JSON Lines) and the field, so a bad row in a 70k-row file can be found and fixed. A row that
fits its format but carries a field of another one (a Dolly ``context`` in an Alpaca file) is an error, not a
silent drop; tolerated oddities are counted as warnings in the `LoadReport`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import chain, islice
from typing import Any, TypedDict, Unpack

from .conversations import TURN_MODES, BadRow, Conversation, check_text, parse_turns
from .readers import FILE_SUFFIXES, DataError, RawRow, open_source

FORMATS = ("alpaca", "sharegpt", "evol-instruct", "openplatypus", "dolly", "messages", "prompt-completion")
INSTRUCTION_FORMATS = ("alpaca", "evol-instruct", "openplatypus")
BAD_ROW_POLICIES = ("error", "skip")
DETECTION_ROWS = 100

_FORMAT_KEYS = {
    "alpaca": "instruction, input, output",
    "sharegpt": "conversations",
    "evol-instruct": "instruction, output (or conversations)",
    "openplatypus": "instruction, input, output, data_source",
    "dolly": "instruction, context, response (or output)",
    "messages": "messages",
    "prompt-completion": "prompt, completion",
}

__all__ = [
    "BAD_ROW_POLICIES",
    "FILE_SUFFIXES",
    "FORMATS",
    "TURN_MODES",
    "Conversation",
    "DataError",
    "Example",
    "LoadReport",
    "default_template",
    "format_of_keys",
    "iter_records",
    "load_examples",
    "load_records",
]


@dataclass(frozen=True)
class Example:
    """One single-turn instruction example, whatever format it came from.

    `source` locates the row ("train.json:row 12") so later stages can point back at it in messages.
    """

    instruction: str
    input: str
    output: str
    source: str


Record = Example | Conversation


@dataclass
class LoadReport:
    """What was read: rows seen, records kept, why the others were skipped, and counted warnings."""

    source: str
    format: str
    n_rows: int = 0
    n_loaded: int = 0
    skipped: Counter = field(default_factory=Counter)
    warnings: Counter = field(default_factory=Counter)
    n_conversations: int = 0
    n_assistant_turns: int = 0
    n_unused_turns: int = 0  # later assistant turns not read with ``turns: first``
    first_bad: str | None = None  # "train.json:row 12: field 'output' is missing", the first row skipped

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
        if self.n_conversations:
            line += f"; {self.n_conversations} conversations with {self.n_assistant_turns} assistant turns"
        skipped = self.skipped_summary()
        if skipped:
            line += f"; {skipped}"
        if self.warnings:
            line += "; warnings: " + ", ".join(
                f"{count} {what}" for what, count in self.warnings.most_common()
            )
        return line

    def count(self, record: Record) -> None:
        self.n_loaded += 1
        if isinstance(record, Conversation):
            self.n_conversations += 1
            self.n_assistant_turns += len(record.exchanges)
            self.n_unused_turns += record.n_unused


# ------------------------------------------------------------------------------------- format detection


def _candidates(keys: set[str]) -> list[str]:
    """Every format whose keys a row has (more than one means the row is ambiguous)."""
    found = []
    if "messages" in keys:
        found.append("messages")
    if "conversations" in keys:
        found.append("sharegpt")
    if {"prompt", "completion"} <= keys:
        found.append("prompt-completion")
    if "instruction" in keys and ("response" in keys or ("context" in keys and "output" in keys)):
        found.append("dolly")
    elif {"instruction", "output"} <= keys:
        found.append(
            "openplatypus" if "data_source" in keys else "alpaca" if "input" in keys else "evol-instruct"
        )
    return found


def format_of_keys(keys: Iterable[str]) -> str | None:
    """The format a row with these keys belongs to, or None when no format or more than one fits."""
    found = _candidates({str(key) for key in keys})
    return found[0] if len(found) == 1 else None


def _family(format: str) -> str:
    """Alpaca, Evol-Instruct and Open-Platypus rows are the same rows with or without optional keys."""
    return "instruction" if format in INSTRUCTION_FORMATS else format


def _detect_format(head: list[RawRow], name: str) -> str:
    """The format of the first rows: the first row that fits one decides; a row fitting several, or rows of
    different formats, is an error that says which rows and keys, and how to force a format."""
    keys_seen: set[str] = set()
    detected: tuple[str, RawRow] | None = None
    for row in head:
        if not isinstance(row.value, dict):
            continue
        keys = {str(key) for key in row.value}
        found = _candidates(keys)
        keys_seen |= keys
        if len(found) > 1:
            raise DataError(
                f"{_row_name(name, row)}: ambiguous format: its keys {sorted(keys)} fit "
                f"{' and '.join(found)}; set the format (data.format) to the one meant"
            )
        if not found:
            continue
        if detected is None:
            detected = (found[0], row)
        elif _family(found[0]) != _family(detected[0]):
            raise DataError(
                f"{name}: rows of different formats: {_row_name(name, detected[1])} is {detected[0]}, "
                f"{_row_name(name, row)} is {found[0]}; set the format (data.format) to the one meant"
            )
    if detected:
        return detected[0]
    if not head:
        raise DataError(f"{name}: contains no rows")
    if not keys_seen:
        raise DataError(f"{name}: cannot detect the format: the first {len(head)} rows are not JSON objects")
    allowed = "; ".join(f"{fmt} ({keys})" for fmt, keys in _FORMAT_KEYS.items())
    raise DataError(
        f"{name}: cannot detect the data format from the keys {sorted(keys_seen)}; "
        f"known formats: {allowed}. Pass format= to force one."
    )


def _has_keys_of(keys: set[str], format: str) -> bool:
    """Whether a row with these keys carries what rows of `format` must have (their values are checked later)."""
    if format in INSTRUCTION_FORMATS:
        return {"instruction", "output"} <= keys or (format == "evol-instruct" and "conversations" in keys)
    if format == "dolly":
        return "instruction" in keys and bool({"response", "output"} & keys)
    if format == "prompt-completion":
        return {"prompt", "completion"} <= keys
    return {"sharegpt": "conversations", "messages": "messages"}[format] in keys


def _check_declared_format(head: list[RawRow], format: str, name: str) -> None:
    """A set format that the rows do not fit: when the first object row lacks that format's keys and the first
    rows are of another format, the error names it (instead of a "missing instruction" for every row)."""
    first = next((row for row in head if isinstance(row.value, dict)), None)
    if first is None:
        return
    keys = {str(key) for key in first.value}
    if _has_keys_of(keys, format):
        return
    try:
        looks_like = _detect_format(head, name)
    except DataError:
        return  # no single format fits the rows either: the row's own error says more
    if _family(looks_like) == _family(format) or (format, looks_like) == ("evol-instruct", "sharegpt"):
        return  # the first row is merely bad; its own error names the field
    raise DataError(
        f"{name}: data.format is {format}, but the rows look like {looks_like} ({_row_name(name, first)} has "
        f"the keys {sorted(keys)}; {format} rows have {_FORMAT_KEYS[format]}): set data.format: auto (it "
        f"detects {looks_like}) or data.format: {looks_like}"
    )


# ------------------------------------------------------------------------------------- row normalising


def _string_field(row: dict, key: str, where: str | None = None) -> str | None:
    """`row[key]` as a string; None when absent or null; a bad row when it has another type."""
    where = where or key
    value = row.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRow(f"non-string {key}", f"field '{where}' must be a string, got {type(value).__name__}")
    check_text(value, where)
    return value


def _required_text(row: dict, key: str, where: str | None = None) -> str:
    """A string field that must be present and not blank (whitespace only counts as empty)."""
    where = where or key
    value = _string_field(row, key, where)
    if value is None and key in row:
        raise BadRow(f"null {key}", f"field '{where}' is null; it must be a non-empty string")
    if value is None:
        raise BadRow(f"missing {key}", f"field '{where}' is missing")
    if not value.strip():
        raise BadRow(f"empty {key}", f"field '{where}' is empty or whitespace only")
    return value


def _instruction_example(row: dict, format: str, source: str) -> Example:
    """An Alpaca / Open-Platypus / Evol-Instruct row; bookkeeping keys are ignored, a Dolly context is not."""
    instruction = _required_text(row, "instruction")
    input_ = _string_field(row, "input") or ""
    output = _required_text(row, "output")
    context = row.get("context")
    if context not in (None, "") and not (isinstance(context, str) and context == input_):
        raise BadRow(
            "unused context",
            f"field 'context' is not part of the {format} format and would be dropped; "
            "this looks like Dolly data (format: dolly uses it as the input)",
        )
    return Example(instruction, input_, output, source)


def _dolly_example(row: dict, source: str) -> Example:
    """A Dolly row: instruction, context (optional) as the input, response (or output, in renamed copies)."""
    if "response" in row and "output" in row:
        raise BadRow("ambiguous response", "fields 'response' and 'output' are both present; keep one")
    key = "response" if "response" in row or "output" not in row else "output"
    instruction = _required_text(row, "instruction")
    context = _string_field(row, "context") or ""
    return Example(instruction, context, _required_text(row, key), source)


def _prompt_completion(row: dict, turns: str, source: str, warnings: Counter) -> Example | Conversation:
    """TRL's prompt/completion rows: both text (an `Example` rendered without a template by default) or both
    message lists (a `Conversation` whose completion alone is trained)."""
    prompt, completion = row.get("prompt"), row.get("completion")
    if isinstance(prompt, list) or isinstance(completion, list):
        if not isinstance(prompt, list) or not isinstance(completion, list):
            raise BadRow(
                "mixed prompt-completion",
                "fields 'prompt' and 'completion' must both be text or both be "
                f"lists of messages, got {type(prompt).__name__} and {type(completion).__name__}",
            )
        if not completion:
            raise BadRow("empty completion", "field 'completion' is an empty list")
        return parse_turns(
            prompt + completion,
            "prompt+completion",
            "messages",
            turns,
            source,
            warnings,
            trained_from=len(prompt),
        )
    return Example(_required_text(row, "prompt"), "", _required_text(row, "completion"), source)


def _record(value: Any, format: str, turns: str, source: str, warnings: Counter) -> Example | Conversation:
    """The record of one parsed row in the given format, or a `BadRow`."""
    if isinstance(value, BadRow):
        raise value
    if not isinstance(value, dict):
        raise BadRow("not an object", f"the row is a JSON {type(value).__name__}, expected an object")
    if format == "sharegpt" or (format == "evol-instruct" and "conversations" in value):
        return parse_turns(value.get("conversations"), "conversations", "sharegpt", turns, source, warnings)
    if format == "messages":
        return parse_turns(value.get("messages"), "messages", "messages", turns, source, warnings)
    if format == "prompt-completion":
        return _prompt_completion(value, turns, source, warnings)
    if format == "dolly":
        return _dolly_example(value, source)
    return _instruction_example(value, format, source)


def _row_name(name: str, row: RawRow) -> str:
    line = f" (line {row.line})" if row.line is not None else ""
    return f"{name}:row {row.index}{line}"


# ---------------------------------------------------------------------------------------------- public


def default_template(format: str, conversational: bool = False) -> str:
    """The prompt template a data format gets unless one is set: the papers' Vicuna v1.1 for ShareGPT and other
    conversations, Alpaca for instruction formats, and the text as it is (``plain``) for TRL's standard
    prompt/completion rows."""
    if format not in FORMATS:
        raise DataError(f"unknown data format '{format}'; expected one of {', '.join(FORMATS)}")
    if format in ("sharegpt", "messages") or conversational:
        return "vicuna"
    return "plain" if format == "prompt-completion" else "alpaca"


def _check_arguments(format: str, on_bad_row: str, limit: int | None, turns: str) -> None:
    if format != "auto" and format not in FORMATS:
        raise DataError(f"unknown data format '{format}'; expected auto or one of {', '.join(FORMATS)}")
    if on_bad_row not in BAD_ROW_POLICIES:
        raise DataError(f"on_bad_row must be one of {', '.join(BAD_ROW_POLICIES)}, got '{on_bad_row}'")
    if limit is not None and limit < 1:
        raise DataError(f"limit must be a positive number of examples, got {limit}")
    if turns not in TURN_MODES:
        raise DataError(f"turns must be one of {', '.join(TURN_MODES)}, got '{turns}'")


class ReadOptions(TypedDict, total=False):
    """How `load_records` and `load_examples` read a source: the keyword arguments of `iter_records`, whose
    defaults apply to what is left out."""

    format: str
    on_bad_row: str
    split: str
    limit: int | None
    turns: str


def iter_records(
    source: str,
    format: str = "auto",
    on_bad_row: str = "error",
    split: str = "train",
    limit: int | None = None,
    turns: str = "all",
) -> tuple[LoadReport, Iterator[Example | Conversation]]:
    """The load report (format already detected) and a one-pass iterator over the records of `source`.

    The report's counts fill in as the iterator runs; when it ends, having found no usable record at all is a
    `DataError`. See `load_records` for the arguments.
    """
    _check_arguments(format, on_bad_row, limit, turns)
    rows = iter(open_source(source, split))
    head = list(islice(rows, DETECTION_ROWS))
    detected = _detect_format(head, source) if format == "auto" else format
    if format != "auto":
        _check_declared_format(head, format, source)
    report = LoadReport(source=source, format=detected)
    return report, _records(chain(head, rows), report, on_bad_row, limit, turns)


def _records(
    rows: Iterable[RawRow], report: LoadReport, on_bad_row: str, limit: int | None, turns: str
) -> Iterator[Example | Conversation]:
    for row in rows:
        if limit is not None and report.n_loaded >= limit:
            break
        report.n_rows += 1
        where = _row_name(report.source, row)
        try:
            record = _record(row.value, report.format, turns, where, report.warnings)
        except BadRow as bad:
            if on_bad_row == "error":
                raise DataError(f"{where}: {bad.detail}") from None
            report.skipped[bad.reason] += 1
            report.first_bad = report.first_bad or f"{where}: {bad.detail}"
            continue
        report.count(record)
        yield record
    if not report.n_rows:
        raise DataError(f"{report.source}: contains no rows")
    if not report.n_loaded:
        raise DataError(
            f"{report.source}: no usable examples in {report.n_rows} rows; {report.skipped_summary()}"
        )


def load_records(
    source: str, **options: Unpack[ReadOptions]
) -> tuple[list[Example | Conversation], LoadReport]:
    """Reads `source` and returns its records (an `Example` per instruction row, a `Conversation` per
    conversational row) with a report of what was read.

    `source` is a local file (.json, .jsonl, their .gz, .parquet, .arrow, .csv, .tsv), a folder written by
    ``datasets``' ``save_to_disk`` or a Hugging Face dataset name (loaded with
    `datasets.load_dataset(source, split=split)`). `format` is detected from the keys of the first rows
    unless given; a given format that the first rows do not fit, while they fit another, is an error naming
    that other format. A bad row raises a `DataError` naming source, row and field, or, with
    ``on_bad_row="skip"``, is skipped and counted in the report. `limit` stops after that many records.
    `turns` is "all" (every exchange of a conversation) or "first" (the first exchange only; later turns are
    then neither read nor checked). Finding no usable record at all is a `DataError` too.
    """
    report, records = iter_records(source, **options)
    return list(records), report


def first_exchange(record: Example | Conversation) -> Example:
    """The single-turn `Example` of a record: the first trained exchange of a conversation (its system message
    and earlier context are not part of an `Example`)."""
    if isinstance(record, Example):
        return record
    conversation = record.first()
    last = conversation.exchanges[-1]
    return Example(last.user, "", last.assistant, record.source)


def load_examples(source: str, **options: Unpack[ReadOptions]) -> tuple[list[Example], LoadReport]:
    """Reads `source` as single-turn examples: instruction rows as they are, conversations as their first
    exchange (the papers' protocol). Training goes through `load_records`, which keeps every turn."""
    records, report = load_records(source, **{**options, "turns": "first"})
    return [first_exchange(record) for record in records], report
