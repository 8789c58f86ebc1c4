"""Property tests: whatever is written to a data file either loads back exactly or fails with a DataError that
names the file, the row and the field; templates and tokenisation keep their invariants on arbitrary text."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from symnoise.data import IGNORE_INDEX, DataError, Example, load_examples, render_prompt, tokenize_examples
from symnoise.data.templates import ALPACA_HEADER_NO_INPUT, ALPACA_HEADER_WITH_INPUT, VICUNA_SYSTEM

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KNOWN_KEYS = {"instruction", "input", "output", "conversations", "data_source"}
HUMAN, ASSISTANT, SYSTEM = {"human", "user"}, {"gpt", "assistant", "chatgpt", "bard"}, {"system"}

short_text = st.text(max_size=20)
long_text = st.builds(
    lambda piece, times: piece * times, st.text(min_size=1, max_size=4), st.integers(300, 1500)
)
texts = st.one_of(
    short_text, short_text, short_text, long_text, st.sampled_from(["", " ", "\n\t", "\u2028x", "</s>"])
)
other_values = st.one_of(
    st.none(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.lists(short_text, max_size=2),
    st.dictionaries(short_text, short_text, max_size=2),
)
values = st.one_of(texts, texts, texts, other_values)
extra_keys = st.dictionaries(short_text.filter(lambda key: key not in KNOWN_KEYS), values, max_size=2)


class Bad(Exception):
    """The oracle's verdict on a row: the field the loader must name (None for a row that is not an object)."""

    def __init__(self, field: str | None):
        super().__init__(field)
        self.field = field


# --------------------------------------------------------------------------------------------- oracles


def required_text(row: dict, key: str, field: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise Bad(field)
    return value


def alpaca_oracle(row) -> tuple[str, str, str]:
    """What an Alpaca row must load as, straight from the spec (checked in the loader's field order)."""
    if not isinstance(row, dict):
        raise Bad(None)
    instruction = required_text(row, "instruction", "instruction")
    input_ = row.get("input")
    if input_ is not None and not isinstance(input_, str):
        raise Bad("input")
    return instruction, input_ or "", required_text(row, "output", "output")


def turn_role(turns: list, position: int) -> tuple[str, dict]:
    turn = turns[position]
    field = f"conversations[{position}]"
    if not isinstance(turn, dict):
        raise Bad(field)
    role = turn.get("from")
    if not isinstance(role, str) or role.strip().lower() not in HUMAN | ASSISTANT | SYSTEM:
        raise Bad(f"{field}.from")
    return role.strip().lower(), turn


def sharegpt_oracle(row) -> tuple[str, str, str]:
    """The first human turn and the assistant turn right after it; anything before the human turn is skipped."""
    if not isinstance(row, dict):
        raise Bad(None)
    turns = row.get("conversations")
    if not isinstance(turns, list):
        raise Bad("conversations")
    for position in range(len(turns)):
        role, turn = turn_role(turns, position)
        if role in HUMAN:
            instruction = required_text(turn, "value", f"conversations[{position}].value")
            if position + 1 == len(turns):
                raise Bad("conversations")
            reply_role, reply = turn_role(turns, position + 1)
            if reply_role not in ASSISTANT:
                raise Bad(f"conversations[{position + 1}].from")
            return instruction, "", required_text(reply, "value", f"conversations[{position + 1}].value")
    raise Bad("conversations")


# --------------------------------------------------------------------------------------------- writers


def write(directory: Path, suffix: str, rows: list, ascii_only: bool = False) -> str:
    path = directory / f"data{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(rows, ensure_ascii=ascii_only), encoding="utf-8")
    elif suffix == ".jsonl":
        path.write_text(
            "".join(json.dumps(row, ensure_ascii=ascii_only) + "\n" for row in rows), encoding="utf-8"
        )
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def check_against_oracle(path: str, rows: list, format: str, oracle: Callable) -> None:
    """Error mode: exact examples, or a DataError naming file, first bad row and field. Skip mode: the good rows."""
    verdicts = []
    for row in rows:
        try:
            verdicts.append(oracle(row))
        except Bad as bad:
            verdicts.append(bad)
    good = [v for v in verdicts if not isinstance(v, Bad)]
    first_bad = next((i for i, v in enumerate(verdicts) if isinstance(v, Bad)), None)
    line = " (line {})" if path.endswith(".jsonl") else ""

    if first_bad is None and good:
        examples, report = load_examples(path, format=format)
        assert [(e.instruction, e.input, e.output) for e in examples] == good
        assert [e.source for e in examples] == [
            f"{path}:row {i}{line.format(i + 1)}" for i in range(len(rows))
        ]
        assert (report.n_rows, report.n_loaded, sum(report.skipped.values())) == (len(rows), len(rows), 0)
    elif first_bad is not None:
        with pytest.raises(DataError) as error:
            load_examples(path, format=format)
        message = str(error.value)
        assert message.startswith(f"{path}:row {first_bad}{line.format(first_bad + 1)}: "), message
        field = verdicts[first_bad].field
        assert (f"field '{field}'" if field else "expected an object") in message, message

    if good:
        examples, report = load_examples(path, format=format, on_bad_row="skip")
        assert [(e.instruction, e.input, e.output) for e in examples] == good
        assert sum(report.skipped.values()) == len(rows) - len(good)
    else:
        with pytest.raises(DataError, match="no usable examples|contains no rows|file is empty"):
            load_examples(path, format=format, on_bad_row="skip")


# ------------------------------------------------------------------------------------------- loaders


def alpaca_like_row():
    fields = st.fixed_dictionaries({}, optional={"instruction": values, "input": values, "output": values})
    return st.builds(lambda base, extra: {**extra, **base}, fields, extra_keys)


rows_of_anything = st.lists(
    st.one_of(alpaca_like_row(), alpaca_like_row(), alpaca_like_row(), values), max_size=6
)


@SETTINGS
@given(
    rows=rows_of_anything,
    suffix=st.sampled_from([".json", ".jsonl"]),
    ascii_only=st.booleans(),
    format=st.sampled_from(["alpaca", "openplatypus", "evol-instruct"]),
)
def test_instruction_rows_load_exactly_or_fail_naming_row_and_field(rows, suffix, ascii_only, format):
    if format == "evol-instruct":
        rows = [row for row in rows if not (isinstance(row, dict) and "conversations" in row)]
    with tempfile.TemporaryDirectory() as directory:
        path = write(Path(directory), suffix, rows, ascii_only)
        check_against_oracle(path, rows, format, alpaca_oracle)


parquet_rows = st.lists(
    st.fixed_dictionaries(
        {
            "instruction": st.one_of(st.none(), texts),
            "input": st.one_of(st.none(), texts),
            "output": st.one_of(st.none(), texts),
        }
    ),
    min_size=1,
    max_size=5,
)


@SETTINGS
@given(rows=parquet_rows)
def test_parquet_rows_load_exactly_or_fail_naming_row_and_field(rows):
    with tempfile.TemporaryDirectory() as directory:
        check_against_oracle(write(Path(directory), ".parquet", rows), rows, "alpaca", alpaca_oracle)


roles = st.sampled_from(
    ["human", "user", "Human", "gpt", "assistant", "chatgpt", "bard", "system", "robot", ""]
)
turn = st.one_of(
    st.fixed_dictionaries({"from": roles, "value": texts}),
    st.fixed_dictionaries({"from": roles, "value": texts}),
    st.fixed_dictionaries({}, optional={"from": st.one_of(roles, values), "value": values}),
    values,
)
conversation_row = st.one_of(
    st.builds(lambda turns, extra: {**extra, "conversations": turns}, st.lists(turn, max_size=5), extra_keys),
    st.builds(lambda value: {"conversations": value}, values),
)


@SETTINGS
@given(
    rows=st.lists(conversation_row, max_size=5),
    suffix=st.sampled_from([".json", ".jsonl"]),
    format=st.sampled_from(["sharegpt", "evol-instruct"]),
)
def test_conversation_rows_load_exactly_or_fail_naming_row_and_field(rows, suffix, format):
    with tempfile.TemporaryDirectory() as directory:
        check_against_oracle(write(Path(directory), suffix, rows), rows, format, sharegpt_oracle)


good_text = texts.filter(lambda text: text.strip() != "")
valid_alpaca = st.fixed_dictionaries({"instruction": good_text, "input": texts, "output": good_text})
valid_sharegpt = st.builds(
    lambda q, a, system: {
        "conversations": ([{"from": "system", "value": system}] if system else [])
        + [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    },
    good_text,
    good_text,
    st.one_of(st.none(), texts),
)


@SETTINGS
@given(
    rows=st.one_of(
        st.lists(valid_alpaca, min_size=1, max_size=5), st.lists(valid_sharegpt, min_size=1, max_size=5)
    ),
    suffix=st.sampled_from([".json", ".jsonl", ".parquet"]),
)
def test_valid_files_round_trip_with_auto_detection(rows, suffix):
    expected_format = "sharegpt" if "conversations" in rows[0] else "alpaca"
    oracle = sharegpt_oracle if expected_format == "sharegpt" else alpaca_oracle
    with tempfile.TemporaryDirectory() as directory:
        examples, report = load_examples(write(Path(directory), suffix, rows))
    assert report.format == expected_format
    assert [(e.instruction, e.input, e.output) for e in examples] == [oracle(row) for row in rows]


@SETTINGS
@given(
    rows=st.lists(valid_alpaca, min_size=1, max_size=4),
    cut=st.floats(0, 1),
    suffix=st.sampled_from([".json", ".jsonl"]),
)
def test_truncated_files_load_a_prefix_or_fail_cleanly(rows, cut, suffix):
    with tempfile.TemporaryDirectory() as directory:
        path = Path(write(Path(directory), suffix, rows))
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * cut)])
        full = [alpaca_oracle(row) for row in rows]
        try:
            examples, _ = load_examples(str(path), on_bad_row="skip")
        except DataError as error:
            assert path.name in str(error)
            return
    loaded = [(e.instruction, e.input, e.output) for e in examples]
    assert loaded == full[: len(loaded)]
    if suffix == ".json":
        assert loaded == full


@SETTINGS
@given(
    data=st.binary(max_size=200),
    suffix=st.sampled_from([".json", ".jsonl", ".parquet"]),
    on_bad_row=st.sampled_from(["error", "skip"]),
)
def test_arbitrary_bytes_never_escape_as_another_exception(data, suffix, on_bad_row):
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / f"junk{suffix}"
        path.write_bytes(data)
        try:
            examples, _ = load_examples(str(path), on_bad_row=on_bad_row)
        except DataError as error:
            assert "junk" in str(error)
            return
    assert examples and all(e.output.strip() and e.instruction.strip() for e in examples)


@SETTINGS
@given(raw=st.binary(min_size=1, max_size=8).filter(lambda raw: not _is_utf8(raw)))
def test_undecodable_bytes_inside_a_field_name_the_row_and_field(raw):
    good = b'{"instruction": "a", "output": "b"}\n'
    bad = b'{"instruction": "a", "output": "x' + raw.replace(b'"', b"").replace(b"\\", b"") + b'"}\n'
    if _is_utf8(bad):
        return
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "d.jsonl"
        path.write_bytes(good + bad + good)
        with pytest.raises(DataError) as error:
            load_examples(str(path))
    message = str(error.value)
    assert message.startswith(f"{path}:row 1 (line 2): ")
    assert "field 'output' is not valid UTF-8" in message or "not valid JSON" in message


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# --------------------------------------------------------------------------------------- templates


examples = st.builds(Example, instruction=good_text, input=texts, output=good_text, source=st.just("p:row 0"))


@SETTINGS
@given(example=examples)
def test_alpaca_prompt_is_the_template_filled_in_verbatim(example):
    prompt = render_prompt(example, "alpaca")
    if example.input.strip():
        head = f"{ALPACA_HEADER_WITH_INPUT}\n\n### Instruction:\n"
        body = f"{example.instruction}\n\n### Input:\n{example.input}"
    else:
        head = f"{ALPACA_HEADER_NO_INPUT}\n\n### Instruction:\n"
        body = example.instruction
    assert prompt.startswith(head) and prompt.endswith("\n\n### Response:")
    assert prompt[len(head) : -len("\n\n### Response:")] == body


@SETTINGS
@given(example=examples)
def test_vicuna_prompt_is_the_template_filled_in_verbatim(example):
    prompt = render_prompt(example, "vicuna")
    head, tail = f"{VICUNA_SYSTEM} USER: ", " ASSISTANT:"
    message = f"{example.instruction}\n\n{example.input}" if example.input.strip() else example.instruction
    assert prompt.startswith(head) and prompt.endswith(tail)
    assert prompt[len(head) : -len(tail)] == message


# --------------------------------------------------------------------------------------- tokenising


@SETTINGS
@given(
    batch=st.lists(examples, min_size=1, max_size=4),
    template=st.sampled_from(["alpaca", "vicuna"]),
    max_length=st.integers(2, 400),
)
def test_tokenised_examples_mask_the_prompt_and_respect_max_length(
    tiny_tokenizer, batch, template, max_length
):
    eos = tiny_tokenizer.eos_token_id

    def ids(text: str) -> list[int]:
        return tiny_tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    expected = []
    for example in batch:
        prompt, target = ids(render_prompt(example, template)), [*ids(example.output), eos]
        if len(prompt) < max_length:
            kept = target[: max_length - len(prompt)]
            expected.append((example, prompt, kept, len(kept) < len(target)))
    if not expected:
        with pytest.raises(DataError):
            tokenize_examples(batch, tiny_tokenizer, template, max_length)
        return
    data = tokenize_examples(batch, tiny_tokenizer, template, max_length)
    assert (len(data), data.n_dropped) == (len(expected), len(batch) - len(expected))
    assert data.n_truncated == sum(truncated for *_, truncated in expected)
    for item, (example, prompt, kept, truncated) in zip(data, expected, strict=True):
        assert item["input_ids"] == prompt + kept and len(item["input_ids"]) <= max_length
        assert item["labels"] == [IGNORE_INDEX] * len(prompt) + kept
        assert item["attention_mask"] == [1] * len(item["input_ids"])
        assert item["input_ids"].count(eos) == (0 if truncated else 1)
        if not truncated:
            assert tiny_tokenizer.decode(kept, clean_up_tokenization_spaces=False) == example.output + "</s>"
