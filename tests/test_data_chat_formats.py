"""The formats people use today: chat messages, prompt/completion, ShareGPT with role/content turns, Dolly;
auto-detection, forcing, ambiguity errors, multi-turn parsing and file encodings."""

from __future__ import annotations

import codecs
import json
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from symnoise.data import DataError, Example, default_template, load_examples
from symnoise.data.conversations import Conversation, Exchange
from symnoise.data.formats import load_records

SHAREGPT = "sharegpt_vicuna/dummy_conversation.json"


def write_jsonl(path: Path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def msg(role, content):
    return {"role": role, "content": content}


def test_messages_with_optional_system_are_detected(tmp_path):
    rows = [
        {
            "messages": [
                msg("system", "Be brief."),
                msg("user", "q1"),
                msg("assistant", "a1"),
                msg("user", "q2"),
                msg("assistant", "a2"),
            ]
        },
        {"messages": [msg("user", "q3"), msg("assistant", "a3")]},
    ]
    path = write_jsonl(tmp_path / "chat.jsonl", rows)
    records, report = load_records(path)
    assert report.format == "messages" and default_template("messages") == "vicuna"
    assert records == [
        Conversation("Be brief.", (Exchange("q1", "a1"), Exchange("q2", "a2")), f"{path}:row 0 (line 1)"),
        Conversation(None, (Exchange("q3", "a3"),), f"{path}:row 1 (line 2)"),
    ]
    assert (report.n_conversations, report.n_assistant_turns) == (2, 3)
    first, _ = load_records(path, turns="first")
    assert [len(r.exchanges) for r in first] == [1, 1] and first[0].system == "Be brief."


def test_openassistant_roles_and_sharegpt_role_content_turns(tmp_path):
    oasst = [{"messages": [msg("prompter", "q"), msg("assistant", "a")]}]
    records, report = load_records(write_jsonl(tmp_path / "oasst.jsonl", oasst))
    assert report.format == "messages" and records[0].exchanges == (Exchange("q", "a"),)
    role_content = [
        {"conversations": [msg("user", "q"), msg("assistant", "a"), msg("user", "q2"), msg("gpt", "a2")]}
    ]
    records, report = load_records(write_jsonl(tmp_path / "sg.jsonl", role_content))
    assert report.format == "sharegpt"
    assert records[0].exchanges == (Exchange("q", "a"), Exchange("q2", "a2"))


def test_prompt_completion_plain_and_conversational(tmp_path):
    plain = [{"prompt": "The sky is", "completion": " blue."}]
    records, report = load_records(write_jsonl(tmp_path / "plain.jsonl", plain))
    assert report.format == "prompt-completion" and default_template("prompt-completion") == "plain"
    assert records == [Example("The sky is", "", " blue.", f"{tmp_path / 'plain.jsonl'}:row 0 (line 1)")]
    conversational = [
        {
            "prompt": [msg("system", "s"), msg("user", "q1"), msg("assistant", "a1"), msg("user", "q2")],
            "completion": [msg("assistant", "a2")],
        }
    ]
    records, _ = load_records(write_jsonl(tmp_path / "conv.jsonl", conversational))
    assert records[0].system == "s"
    assert records[0].exchanges == (Exchange("q1", "a1", train=False), Exchange("q2", "a2", train=True))
    assert (
        records[0].first().exchanges == records[0].exchanges
    )  # the first trained reply comes after the context
    mixed = [{"prompt": "text", "completion": [msg("assistant", "a")]}]
    with pytest.raises(
        DataError, match=r"row 0 \(line 1\): fields 'prompt' and 'completion' must both be text"
    ):
        load_records(write_jsonl(tmp_path / "mixed.jsonl", mixed))


def test_dolly_and_dolly_with_output_keep_their_context(tmp_path):
    dolly = [
        {
            "instruction": "Summarise.",
            "context": "A long text.",
            "response": "Short.",
            "category": "summarization",
        },
        {"instruction": "Say hi.", "context": "", "response": "Hi."},
    ]
    examples, report = load_examples(write_jsonl(tmp_path / "dolly.jsonl", dolly))
    assert report.format == "dolly" and default_template("dolly") == "alpaca"
    assert [(e.instruction, e.input, e.output) for e in examples] == [
        ("Summarise.", "A long text.", "Short."),
        ("Say hi.", "", "Hi."),
    ]
    renamed = [{"instruction": "Summarise.", "context": "A long text.", "output": "Short."}]
    path = write_jsonl(tmp_path / "dolly_output.jsonl", renamed)
    examples, report = load_examples(path)
    assert report.format == "dolly" and (examples[0].input, examples[0].output) == ("A long text.", "Short.")
    for forced in ["evol-instruct", "alpaca"]:
        with pytest.raises(DataError) as error:
            load_examples(path, format=forced)
        assert str(error.value).startswith(
            f"{path}:row 0 (line 1): field 'context' is not part of the {forced}"
        )
        assert "format: dolly" in str(error.value)


def test_ambiguous_rows_and_mixed_formats_are_errors(tmp_path):
    both = [{"messages": [msg("user", "q"), msg("assistant", "a")], "instruction": "q", "output": "a"}]
    path = write_jsonl(tmp_path / "both.jsonl", both)
    with pytest.raises(
        DataError,
        match=r"both.jsonl:row 0 \(line 1\): ambiguous format: .* fit messages and "
        r"evol-instruct; set the format",
    ):
        load_records(path)
    records, report = load_records(path, format="messages")
    assert report.format == "messages" and len(records) == 1
    mixed = [
        {"instruction": "q", "input": "", "output": "a"},
        {"instruction": "q", "output": "a"},
        {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
    ]
    with pytest.raises(
        DataError,
        match=r"rows of different formats: .*row 0 \(line 1\) is alpaca, .*row 2 "
        r"\(line 3\) is sharegpt",
    ):
        load_records(write_jsonl(tmp_path / "mixed.jsonl", mixed))
    same_family = mixed[:2]
    _, report = load_records(write_jsonl(tmp_path / "family.jsonl", same_family))
    assert report.format == "alpaca"


@pytest.mark.parametrize(
    ("turns", "field", "reason"),
    [
        ([msg("user", "q"), msg("robot", "a")], "messages[1].role", "unknown turn role"),
        (
            [msg("user", "q"), msg("assistant", "a"), msg("assistant", "b")],
            "messages[2]",
            "turns do not alternate",
        ),
        ([msg("user", "q"), msg("user", "q2"), msg("assistant", "a")], "messages[1].role", "no reply"),
        (
            [
                msg("user", "q"),
                msg("assistant", "a"),
                msg("system", "s"),
                msg("user", "q2"),
                msg("assistant", "b"),
            ],
            "messages[2]",
            "misplaced system turn",
        ),
        (
            [msg("user", "q"), msg("assistant", "a"), msg("user", "q2"), msg("assistant", " ")],
            "messages[3].content",
            "empty content",
        ),
    ],
)
def test_bad_multi_turn_rows_name_the_turn(tmp_path, turns, field, reason):
    good = {"messages": [msg("user", "q"), msg("assistant", "a")]}
    path = write_jsonl(tmp_path / "m.jsonl", [good, {"messages": turns}])
    with pytest.raises(DataError) as error:
        load_records(path)
    assert f"m.jsonl:row 1 (line 2): field '{field}'" in str(error.value)
    records, report = load_records(path, on_bad_row="skip")
    assert len(records) == 1 and report.skipped == Counter({reason: 1})


def test_tolerated_turns_are_counted_warnings(tmp_path):
    rows = [
        {
            "conversations": [
                {"from": "gpt", "value": "left over"},
                {"from": "human", "value": "q"},
                {"from": "gpt", "value": "a"},
                {"from": "human", "value": "unanswered"},
            ]
        }
    ]
    records, report = load_records(write_jsonl(tmp_path / "s.jsonl", rows))
    assert records[0].exchanges == (Exchange("q", "a"),)
    assert report.warnings == Counter(
        {"leading assistant turn skipped": 1, "final user turn without reply dropped": 1}
    )
    assert (
        "warnings: 1 leading assistant turn skipped, 1 final user turn without reply dropped"
        in report.summary()
    )


def test_sharegpt_sample_keeps_every_turn(shared_data):
    raw = json.loads((shared_data / SHAREGPT).read_text(encoding="utf-8"))
    records, report = load_records(str(shared_data / SHAREGPT))
    print(f"\nsharegpt, all turns: {report.summary()}")
    assert (report.n_rows, report.n_conversations, report.n_assistant_turns) == (500, 500, 1000)
    assert Counter(len(r.exchanges) for r in records) == Counter({1: 167, 2: 166, 3: 167})
    assert sum(len(r.exchanges) > 1 for r in records) == 333
    for record, row in zip(records, raw, strict=True):
        turns = row["conversations"]
        assert [(e.user, e.assistant) for e in record.exchanges] == [
            (turns[k]["value"], turns[k + 1]["value"]) for k in range(0, len(turns), 2)
        ]
    first, report = load_records(str(shared_data / SHAREGPT), turns="first")
    assert (report.n_conversations, report.n_assistant_turns) == (500, 500)


@pytest.mark.parametrize(
    ("encoding", "bom", "named"),
    [
        ("utf-16-le", codecs.BOM_UTF16_LE, "UTF-16 (little-endian, with a byte-order mark)"),
        ("utf-16-be", codecs.BOM_UTF16_BE, "UTF-16 (big-endian, with a byte-order mark)"),
        ("utf-16-le", b"", "UTF-16 (little-endian, without a byte-order mark)"),
        ("utf-32-le", codecs.BOM_UTF32_LE, "UTF-32 (little-endian, with a byte-order mark)"),
    ],
)
def test_wide_encodings_are_named(tmp_path, encoding, bom, named):
    text = json.dumps([{"instruction": "a", "input": "", "output": "b"}])
    for suffix in [".json", ".jsonl"]:
        path = tmp_path / f"wide{suffix}"
        path.write_bytes(bom + text.encode(encoding))
        with pytest.raises(DataError) as error:
            load_examples(str(path))
        assert str(error.value).startswith(f"{path}: the file is encoded as {named}; symnoise reads UTF-8")


def test_utf8_bom_is_accepted(tmp_path):
    row = {"instruction": "caf\u00e9", "input": "", "output": "b"}
    for suffix, text in [(".json", json.dumps([row])), (".jsonl", json.dumps(row) + "\n")]:
        path = tmp_path / f"bom{suffix}"
        path.write_bytes(codecs.BOM_UTF8 + text.encode("utf-8"))
        examples, _ = load_examples(str(path))
        assert [(e.instruction, e.output) for e in examples] == [("caf\u00e9", "b")]


@pytest.mark.parametrize("chunk", [1, 3, 7, 64, 1 << 20])
def test_json_arrays_are_read_in_chunks_exactly(tmp_path, monkeypatch, chunk):
    """A JSON array read in chunks of any size gives json.loads's rows, and json.loads's line and column for a
    malformed file (multi-byte characters and numbers cut by chunk ends included)."""
    from symnoise.data import readers

    monkeypatch.setattr(readers._ChunkedText, "CHUNK", chunk)
    rows = [
        {"instruction": "caf\u00e9 \u2603 \U0001f600", "input": "", "output": "12345"},
        {"instruction": "x" * 40, "output": 'y\n"z"'},
        {"instruction": "a", "input": "b", "output": "c"},
    ]
    path = tmp_path / "d.json"
    path.write_text(json.dumps(rows, indent=2, ensure_ascii=False), encoding="utf-8")
    examples, _ = load_examples(str(path))
    assert [(e.instruction, e.input, e.output) for e in examples] == [
        (r["instruction"], r.get("input", ""), r["output"]) for r in rows
    ]
    numbers = tmp_path / "n.json"
    numbers.write_text("[123456, 7]")
    with pytest.raises(DataError, match=r"n.json:row 0: the row is a JSON int"):
        load_examples(str(numbers), format="alpaca")
    text = json.dumps(rows, indent=2).replace('"output": "c"', '"output": "c",, ')
    bad = tmp_path / "bad.json"
    bad.write_text(text, encoding="utf-8")
    with pytest.raises(json.JSONDecodeError) as expected:
        json.loads(text)
    with pytest.raises(DataError) as error:
        load_examples(str(bad))
    assert f"bad.json: not valid JSON at line {expected.value.lineno} column {expected.value.colno}" in str(
        error.value
    )


def test_a_minified_array_is_not_read_whole_to_find_its_layout(tmp_path, monkeypatch):
    """Layout detection reads at most the first 64 KiB: a one-line JSON array larger than that is read as an
    array (.json) or as one JSON Lines row (.jsonl, as before), without json.loads of the whole file."""
    from symnoise.data import readers

    rows = [{"instruction": f"i{k}", "input": "", "output": "o" * 50} for k in range(2000)]
    text = json.dumps(rows)
    assert "\n" not in text and len(text) > readers.HEAD_BYTES
    array = tmp_path / "big.json"
    array.write_text(text, encoding="utf-8")
    loads = json.loads
    monkeypatch.setattr(
        readers.json,
        "loads",
        lambda s, *a, **k: (
            (_ for _ in ()).throw(AssertionError("whole"))
            if len(s) > readers.HEAD_BYTES
            else loads(s, *a, **k)
        ),
    )
    examples, _ = load_examples(str(array))
    assert len(examples) == 2000 and examples[-1].instruction == "i1999"
    lines = tmp_path / "big.jsonl"
    lines.write_text(text, encoding="utf-8")
    monkeypatch.setattr(readers.json, "loads", loads)
    with pytest.raises(DataError, match=r"big.jsonl:row 0 \(line 1\): the row is a JSON list"):
        load_examples(str(lines), format="alpaca")


# ------------------------------------------------------------------------- property: multi-turn messages

USER, ASSISTANT = {"user", "human", "prompter"}, {"assistant", "gpt", "chatgpt", "bard", "model"}


class Bad(Exception):
    def __init__(self, field):
        super().__init__(field)
        self.field = field


def messages_oracle(turns):
    """The spec of a `messages` row read with every turn (conversations.py docstring), written out directly:
    (system, [(user, assistant)]) or Bad(the field the error names)."""
    if not isinstance(turns, list):
        raise Bad("messages")
    system, exchanges, pending, started = None, [], None, False
    for k, turn in enumerate(turns):
        where = f"messages[{k}]"
        if not isinstance(turn, dict):
            raise Bad(where)
        role_key = "role" if "role" in turn or "from" not in turn else "from"
        content_key = "content" if "content" in turn or "value" not in turn else "value"
        role = turn.get(role_key)
        if not isinstance(role, str) or role.strip().lower() not in USER | ASSISTANT | {"system"}:
            raise Bad(f"{where}.{role_key}")
        role = role.strip().lower()
        if pending is not None and role not in ASSISTANT:
            raise Bad(f"{where}.{role_key}")
        if role == "system":
            if started:
                raise Bad(where)
            content = turn.get(content_key)
            if system is None and isinstance(content, str) and content.strip():
                system = content
            continue
        if not started and role in ASSISTANT:
            continue
        started = True
        content = turn.get(content_key)
        if not isinstance(content, str) or not content.strip():
            raise Bad(f"{where}.{content_key}")
        if role in USER:
            pending = content
        elif pending is None:
            raise Bad(where)
        else:
            exchanges.append((pending, content))
            pending = None
    if not exchanges:
        raise Bad("messages")
    return system, exchanges


roles = st.sampled_from(["user", "assistant", "system", "gpt", "Human", "prompter", "robot", ""])
texts = st.one_of(st.text(max_size=6), st.sampled_from(["", " ", "q", "a"]))
turn = st.one_of(
    st.fixed_dictionaries({"role": roles, "content": texts}),
    st.fixed_dictionaries({"role": roles, "content": texts}),
    st.fixed_dictionaries({"from": roles, "value": texts}),
    st.fixed_dictionaries(
        {},
        optional={
            "role": st.one_of(roles, st.integers()),
            "content": st.one_of(texts, st.none(), st.integers()),
        },
    ),
    st.integers(),
)


good_text = st.text(min_size=1, max_size=6).filter(str.strip)


def said(role_names, text=good_text):
    return st.builds(
        lambda role, content, style: (
            {"role": role, "content": content} if style else {"from": role, "value": content}
        ),
        st.sampled_from(role_names),
        text,
        st.booleans(),
    )


valid_turns = st.builds(
    lambda system, leading, pairs, trailing: (
        system + leading + [t for pair in pairs for t in pair] + trailing
    ),
    st.lists(said(["system"], texts), max_size=2),
    st.lists(said(["gpt"]), max_size=1),
    st.lists(
        st.tuples(said(["user", "Human", "prompter"]), said(["assistant", "gpt", "model"])),
        min_size=1,
        max_size=3,
    ),
    st.lists(said(["user"]), max_size=1),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(turns=st.one_of(valid_turns, valid_turns, st.lists(turn, max_size=6), st.text(max_size=3)))
def test_messages_rows_load_as_the_spec_says(tmp_path, turns):
    path = write_jsonl(tmp_path / "p.jsonl", [{"messages": turns}])
    try:
        expected = messages_oracle(turns)
    except Bad as bad:
        with pytest.raises(DataError) as error:
            load_records(path, format="messages")
        assert f"p.jsonl:row 0 (line 1): field '{bad.field}'" in str(error.value), (turns, str(error.value))
        return
    records, _ = load_records(path, format="messages")
    system, exchanges = expected
    assert records[0].system == system
    assert [(e.user, e.assistant) for e in records[0].exchanges] == exchanges


def test_an_empty_second_assistant_turn_is_named_for_its_empty_content(tmp_path):
    """Found by the property test above: the spec names the empty content before the broken alternation."""
    turns = [
        {"role": "user", "content": "0"},
        {"role": "assistant", "content": "0"},
        {"role": "assistant", "content": ""},
    ]
    path = write_jsonl(tmp_path / "p.jsonl", [{"messages": turns}])
    with pytest.raises(DataError, match=r"p\.jsonl:row 0 \(line 1\): field 'messages\[2\]\.content'"):
        load_records(path, format="messages")
