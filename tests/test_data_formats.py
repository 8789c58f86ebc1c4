"""Loading, normalising and tokenising real and hand-made data files.

The real files come from ../shared/data (see its README for counts): the 5,000-row Alpaca subset (1,943 rows with
an input; rows 2335 and 4658 have an empty output), FastChat's 500-conversation ShareGPT sample and the WizardLM
test set, plus an Evol-Instruct model's AlpacaEval outputs as real instruction/output rows.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from symnoise.data import (
    IGNORE_INDEX,
    DataError,
    Example,
    default_template,
    load_examples,
    render_prompt,
    tokenize_examples,
)

# Part of the floor subset: run against the lowest declared versions (tools/test_floors.sh).
pytestmark = pytest.mark.floor

ALPACA_5K = "alpaca/alpaca_data_5000_random_subset.json"
SHAREGPT = "sharegpt_vicuna/dummy_conversation.json"
WIZARDLM = "wizardlm/WizardLM_testset.jsonl"
EVOL_OUTPUTS = "alpaca_eval/model_outputs/llama-2-chat-7b-evol70k-neft.json"


def write_json(path: Path, rows) -> str:
    path.write_text(json.dumps(rows), encoding="utf-8")
    return str(path)


def write_jsonl(path: Path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def alpaca_rows(shared_data):
    return json.loads((shared_data / ALPACA_5K).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def alpaca_loaded(shared_data):
    return load_examples(str(shared_data / ALPACA_5K), on_bad_row="skip")


# --------------------------------------------------------------------------------------------- real data


def test_alpaca_subset_counts(alpaca_loaded):
    examples, report = alpaca_loaded
    with_input = sum(1 for example in examples if example.input)
    print(f"\nalpaca 5k: {report.summary()}; {with_input} with input, {len(examples) - with_input} without")
    assert report.format == "alpaca"
    assert (report.n_rows, report.n_loaded) == (5000, 4998)
    assert report.skipped == Counter({"empty output": 2})
    assert report.skipped_summary() == "skipped 2 rows: 2 empty output"
    assert (with_input, len(examples) - with_input) == (1943, 3055)


def test_alpaca_subset_rows_are_loaded_verbatim(alpaca_loaded, alpaca_rows):
    examples, _ = alpaca_loaded
    kept = [(index, row) for index, row in enumerate(alpaca_rows) if row["output"].strip()]
    assert len(kept) == len(examples)
    for example, (index, row) in zip(examples, kept, strict=True):
        assert (example.instruction, example.input, example.output) == (
            row["instruction"],
            row["input"],
            row["output"],
        )
        assert example.source.endswith(f"{ALPACA_5K}:row {index}")


def test_alpaca_subset_empty_output_is_an_error_by_default(shared_data):
    with pytest.raises(DataError) as error:
        load_examples(str(shared_data / ALPACA_5K))
    message = str(error.value)
    assert ALPACA_5K in message and "row 2335" in message and "'output'" in message and "empty" in message


def test_sharegpt_sample_is_single_turn(shared_data):
    raw = json.loads((shared_data / SHAREGPT).read_text(encoding="utf-8"))
    examples, report = load_examples(str(shared_data / SHAREGPT))
    print(f"\nsharegpt: {report.summary()}")
    assert report.format == "sharegpt" and default_template(report.format) == "vicuna"
    assert (report.n_rows, report.n_loaded) == (500, 500)
    for example, row in zip(examples, raw, strict=True):
        turns = row["conversations"]
        assert (turns[0]["from"], turns[1]["from"]) == ("human", "gpt")
        assert (example.instruction, example.input, example.output) == (
            turns[0]["value"],
            "",
            turns[1]["value"],
        )
    assert examples[0].instruction == "Who are you?"


def test_wizardlm_test_set_is_not_training_data(shared_data):
    """The WizardLM test set has instructions but no responses: auto-detection must say so, naming the keys."""
    with pytest.raises(DataError) as error:
        load_examples(str(shared_data / WIZARDLM))
    message = str(error.value)
    assert "WizardLM_testset.jsonl" in message
    assert "'Instruction'" in message and "'Skill'" in message
    for fmt in ["alpaca", "sharegpt", "evol-instruct", "openplatypus"]:
        assert fmt in message


def test_wizardlm_test_set_forced_as_evol_instruct_names_row_line_and_field(shared_data):
    with pytest.raises(DataError) as error:
        load_examples(str(shared_data / WIZARDLM), format="evol-instruct")
    message = str(error.value)
    assert "WizardLM_testset.jsonl:row 0 (line 1)" in message and "'instruction' is missing" in message


def test_evol_instruct_rows_from_real_outputs(shared_data, tmp_path):
    """instruction/output rows (with extra keys) are Evol-Instruct; the same rows as conversations load equal."""
    raw = json.loads((shared_data / EVOL_OUTPUTS).read_text(encoding="utf-8"))
    examples, report = load_examples(str(shared_data / EVOL_OUTPUTS))
    print(f"\nevol-instruct: {report.summary()}")
    assert report.format == "evol-instruct" and default_template(report.format) == "alpaca"
    assert report.n_loaded == len(raw) == 805
    assert [(e.instruction, e.output) for e in examples] == [(r["instruction"], r["output"]) for r in raw]

    as_conversations = [
        {
            "idx": i,
            "conversations": [
                {"from": "human", "value": r["instruction"]},
                {"from": "gpt", "value": r["output"]},
            ],
        }
        for i, r in enumerate(raw)
    ]
    path = write_json(tmp_path / "evol_v2.json", as_conversations)
    again, _ = load_examples(path, format="evol-instruct")
    assert [(e.instruction, e.input, e.output) for e in again] == [
        (e.instruction, "", e.output) for e in examples
    ]


# ------------------------------------------------------------------------------------- file layouts


def test_jsonl_and_parquet_load_the_same_examples(alpaca_rows, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = alpaca_rows[:300]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    sources = [
        write_json(tmp_path / "a.json", rows),
        write_jsonl(tmp_path / "a.jsonl", rows),
        str(tmp_path / "a.parquet"),
    ]
    loaded = [load_examples(source)[0] for source in sources]
    expected = [(r["instruction"], r["input"], r["output"]) for r in rows]
    for examples in loaded:
        assert [(e.instruction, e.input, e.output) for e in examples] == expected


def test_json_array_named_jsonl_and_jsonl_named_json(tmp_path):
    """NEFTune's alpaca-train.jsonl is a JSON array; many .json files on the hub are JSON Lines."""
    rows = [
        {"instruction": "a", "input": "", "output": "b"},
        {"instruction": "c", "input": "d", "output": "e"},
    ]
    array_as_jsonl = tmp_path / "train.jsonl"
    array_as_jsonl.write_text(json.dumps(rows, indent=4), encoding="utf-8")
    lines_as_json = write_jsonl(tmp_path / "train.json", rows)
    for source in [str(array_as_jsonl), lines_as_json]:
        examples, _ = load_examples(source)
        assert [(e.instruction, e.input, e.output) for e in examples] == [("a", "", "b"), ("c", "d", "e")]
    one_line_array = write_json(tmp_path / "one_line.jsonl", rows)
    with pytest.raises(DataError, match=r"one_line.jsonl:row 0 \(line 1\): the row is a JSON list"):
        load_examples(one_line_array, format="alpaca")


def test_openplatypus_is_detected_and_extra_keys_ignored(tmp_path):
    rows = [{"input": "", "output": "4", "instruction": "2+2?", "data_source": "scienceqa"}]
    examples, report = load_examples(write_json(tmp_path / "platypus.json", rows))
    assert report.format == "openplatypus" and default_template("openplatypus") == "alpaca"
    assert examples == [Example("2+2?", "", "4", f"{tmp_path / 'platypus.json'}:row 0")]


def test_limit_stops_after_that_many_examples(tmp_path):
    rows = [{"instruction": f"i{k}", "output": "" if k == 1 else f"o{k}"} for k in range(10)]
    examples, report = load_examples(write_json(tmp_path / "x.json", rows), on_bad_row="skip", limit=3)
    assert [e.instruction for e in examples] == ["i0", "i2", "i3"]
    assert (report.n_rows, report.n_loaded, report.skipped) == (4, 3, Counter({"empty output": 1}))


# ------------------------------------------------------------------------------------------ ShareGPT


def conv(*turns):
    return {"conversations": [{"from": role, "value": value} for role, value in turns]}


def test_sharegpt_roles_and_leading_turns(tmp_path):
    rows = [
        conv(("system", "be nice"), ("user", "q1"), ("assistant", "a1")),
        conv(("gpt", "left over"), ("human", "q2"), ("chatgpt", "a2"), ("human", "later")),
        conv(("Human", "q3"), ("bard", "a3")),
    ]
    examples, _ = load_examples(write_json(tmp_path / "s.json", rows))
    assert [(e.instruction, e.output) for e in examples] == [("q1", "a1"), ("q2", "a2"), ("q3", "a3")]


@pytest.mark.parametrize(
    ("row", "field", "reason"),
    [
        (conv(("human", "q")), "conversations", "no reply"),
        (conv(("human", "q"), ("human", "again")), "conversations[1].from", "no reply"),
        (conv(("gpt", "a")), "conversations", "no human turn"),
        (conv(("human", "q"), ("robot", "a")), "conversations[1].from", "unknown turn role"),
        (conv(("human", "q"), ("gpt", "  ")), "conversations[1].value", "empty value"),
        (conv(("human", ""), ("gpt", "a")), "conversations[0].value", "empty value"),
        ({"conversations": "human: hi"}, "conversations", "non-list conversations"),
        ({"conversations": [["human", "q"]]}, "conversations[0]", "bad turn"),
        (
            {"conversations": [{"from": "human", "value": 3}, {"from": "gpt", "value": "a"}]},
            "conversations[0].value",
            "non-string value",
        ),
    ],
)
def test_sharegpt_bad_rows(tmp_path, row, field, reason):
    good = conv(("human", "q"), ("gpt", "a"))
    path = write_json(tmp_path / "s.json", [good, row])
    with pytest.raises(DataError) as error:
        load_examples(path, format="sharegpt")
    assert f"s.json:row 1: field '{field}'" in str(error.value)
    examples, report = load_examples(path, format="sharegpt", on_bad_row="skip")
    assert len(examples) == 1 and report.skipped == Counter({reason: 1})


# ------------------------------------------------------------------------------------------ bad rows


@pytest.mark.parametrize(
    ("row", "expected", "reason"),
    [
        ({"input": "", "output": "o"}, "field 'instruction' is missing", "missing instruction"),
        (
            {"instruction": None, "output": "o"},
            "field 'instruction' is null; it must be a non-empty string",
            "null instruction",
        ),
        (
            {"instruction": "i", "output": None},
            "field 'output' is null; it must be a non-empty string",
            "null output",
        ),
        ({"instruction": "i", "output": 5}, "field 'output' must be a string, got int", "non-string output"),
        (
            {"instruction": "i", "input": ["x"], "output": "o"},
            "field 'input' must be a string, got list",
            "non-string input",
        ),
        (
            {"instruction": "i", "output": " \n\t"},
            "field 'output' is empty or whitespace only",
            "empty output",
        ),
        (
            {"instruction": "", "output": "o"},
            "field 'instruction' is empty or whitespace only",
            "empty instruction",
        ),
        (["i", "", "o"], "the row is a JSON list, expected an object", "not an object"),
        ("just text", "the row is a JSON str, expected an object", "not an object"),
    ],
)
def test_bad_row_names_file_row_and_field(tmp_path, row, expected, reason):
    good = {"instruction": "i", "input": "", "output": "o"}
    for path in [
        write_json(tmp_path / "d.json", [good, good, row]),
        write_jsonl(tmp_path / "d.jsonl", [good, good, row]),
    ]:
        with pytest.raises(DataError) as error:
            load_examples(path, format="alpaca")
        line = " (line 3)" if path.endswith("l") else ""
        assert str(error.value) == f"{path}:row 2{line}: {expected}"
        examples, report = load_examples(path, format="alpaca", on_bad_row="skip")
        assert len(examples) == 2 and report.skipped == Counter({reason: 1})


def test_jsonl_invalid_line_and_blank_lines(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(
        '{"instruction": "a", "output": "b"}\n\n{"instruction": "c", "outp\n{"instruction": "d", "output": "e"}\n'
    )
    with pytest.raises(DataError, match=r"d\.jsonl:row 1 \(line 3\): not valid JSON"):
        load_examples(str(path))
    examples, report = load_examples(str(path), on_bad_row="skip")
    assert [e.instruction for e in examples] == ["a", "d"]
    assert examples[1].source.endswith("d.jsonl:row 2 (line 4)")
    assert report.skipped == Counter({"invalid JSON": 1})


def test_non_utf8_bytes_are_a_bad_row(tmp_path):
    good = b'{"instruction": "a", "output": "b"}\n'
    latin1 = '{"instruction": "caf\u00e9", "output": "b"}\n'.encode("latin-1")
    for name, data in [
        ("d.jsonl", good + latin1 + good),
        ("d.json", b"[" + good + b"," + latin1 + b"," + good + b"]"),
    ]:
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(DataError) as error:
            load_examples(str(path))
        assert f"{name}:row 1" in str(error.value) and "field 'instruction' is not valid UTF-8" in str(
            error.value
        )
        examples, report = load_examples(str(path), on_bad_row="skip")
        assert len(examples) == 2 and report.skipped == Counter({"invalid UTF-8": 1})


def test_skip_summary_reads_like_the_cli_line(tmp_path):
    rows = [
        {"instruction": "i", "output": ""},
        {"output": "o"},
        {"instruction": "i", "output": " "},
        {"instruction": "i", "output": "o"},
    ]
    _, report = load_examples(write_json(tmp_path / "d.json", rows), format="alpaca", on_bad_row="skip")
    assert report.skipped_summary() == "skipped 3 rows: 2 empty output, 1 missing instruction"


# -------------------------------------------------------------------------------------- whole-file errors


def test_whole_file_errors(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(DataError, match="nope.json: file not found"):
        load_examples(str(missing))
    truncated = tmp_path / "cut.json"
    truncated.write_text('[{"instruction": "a", "output": "b"}, {"instru')
    with pytest.raises(DataError, match=r"cut.json: not valid JSON at line 1 column \d+"):
        load_examples(str(truncated))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n")
    with pytest.raises(DataError, match="empty.jsonl: the file is empty"):
        load_examples(str(empty))
    obj = tmp_path / "obj.json"
    obj.write_text(json.dumps({"data": [{"instruction": "a", "output": "b"}]}, indent=2))
    with pytest.raises(DataError, match="top level is a JSON object"):
        load_examples(str(obj))
    text = tmp_path / "d.txt"  # CSV is read now (test_data_files.py); a .txt file is still refused
    text.write_text("instruction,output\na,b\n")
    with pytest.raises(DataError, match="unsupported file type '.txt'"):
        load_examples(str(text))
    with pytest.raises(DataError, match="is a directory"):
        load_examples(str(tmp_path))
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match="broken.parquet: not a readable Parquet file"):
        load_examples(str(broken))


def test_all_rows_bad_is_an_error_not_an_empty_result(tmp_path):
    path = write_json(tmp_path / "d.json", [{"instruction": "a", "output": ""}] * 3)
    with pytest.raises(DataError, match="no usable examples in 3 rows; skipped 3 rows: 3 empty output"):
        load_examples(path, on_bad_row="skip")
    with pytest.raises(DataError, match="contains no rows"):
        load_examples(write_json(tmp_path / "e.json", []))


def test_bad_arguments(tmp_path):
    path = write_json(tmp_path / "d.json", [{"instruction": "a", "output": "b"}])
    with pytest.raises(
        DataError, match="unknown data format 'oasst'; expected auto or one of alpaca, sharegpt"
    ):
        load_examples(path, format="oasst")
    with pytest.raises(DataError, match="on_bad_row"):
        load_examples(path, on_bad_row="ignore")
    with pytest.raises(DataError, match="limit"):
        load_examples(path, limit=0)


# ------------------------------------------------------------------------------------------------ hub


@pytest.fixture
def empty_hf_home(monkeypatch, tmp_path):
    """A Hugging Face home with nothing cached (the tests decide what the cache holds)."""
    for name in ("HF_HUB_CACHE", "HF_DATASETS_CACHE", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    return tmp_path / "hf"


def test_hub_name_offline_is_a_clear_error(monkeypatch, empty_hf_home):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError) as error:
        load_examples("tatsu-lab/alpaca")
    assert str(error.value) == (
        "dataset 'tatsu-lab/alpaca' (split 'train') is not a local file and is not in the "
        "Hugging Face cache, and HF_HUB_OFFLINE (or HF_DATASETS_OFFLINE) is set, so it "
        "cannot be downloaded; unset it, or give a local file"
    )


def test_hub_name_with_the_hub_unreachable_fails_in_seconds(monkeypatch, empty_hf_home):
    """Without the probe, datasets retries for about 20 s before it gives up."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: connection refused
    with pytest.raises(DataError) as error:
        load_examples("hf://datasets/tatsu-lab/alpaca/data/train.json")
    assert str(error.value).startswith(
        "dataset 'hf://datasets/tatsu-lab/alpaca/data/train.json' (split 'train') is not a local file and is not in "
        "the Hugging Face cache, and http://127.0.0.1:9 cannot be reached ("
    )


@pytest.mark.parametrize("cache", ["hub download", "datasets cache"])
def test_hub_path_goes_through_load_dataset(monkeypatch, empty_hf_home, cache):
    """A cached hub dataset is left to datasets.load_dataset(name, split=split), even offline, and its rows are
    read like any other source."""
    import datasets

    if cache == "hub download":
        (empty_hf_home / "hub" / "datasets--garage-bAInd--Open-Platypus" / "snapshots" / "abc").mkdir(
            parents=True
        )
    else:
        (empty_hf_home / "datasets" / "garage-bAInd___Open-Platypus" / "default").mkdir(parents=True)
    calls = []

    def fake_load_dataset(name, split):
        calls.append((name, split))
        return datasets.Dataset.from_list(
            [
                {"instruction": "q", "input": "", "output": "a", "data_source": "x"},
                {"instruction": "q2", "input": "in", "output": " ", "data_source": "y"},
            ]
        )

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    examples, report = load_examples("garage-bAInd/Open-Platypus", split="train[:2]", on_bad_row="skip")
    assert calls == [("garage-bAInd/Open-Platypus", "train[:2]")]
    assert report.format == "openplatypus" and report.skipped == Counter({"empty output": 1})
    assert examples == [Example("q", "", "a", "garage-bAInd/Open-Platypus:row 0")]


def test_hub_dataset_that_fails_to_load_is_one_clear_error(monkeypatch, empty_hf_home):
    (empty_hf_home / "datasets" / "tatsu-lab___alpaca" / "default").mkdir(parents=True)  # not loadable
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError) as error:
        load_examples("tatsu-lab/alpaca")
    message = str(error.value)
    assert message.startswith(
        "could not load dataset 'tatsu-lab/alpaca' (split 'train') from the Hugging Face hub"
    )
    assert "\n" not in message


# ------------------------------------------------------------------------------------------ tokenising


@pytest.fixture(scope="module")
def alpaca_tokenized(alpaca_loaded, tiny_tokenizer):
    examples, _ = alpaca_loaded
    return tokenize_examples(examples, tiny_tokenizer, "alpaca", max_length=4096)


def test_labels_mask_exactly_the_prompt(alpaca_loaded, alpaca_tokenized, tiny_tokenizer):
    examples, _ = alpaca_loaded
    data = alpaca_tokenized
    print(f"\nalpaca tokenised: {data.summary()}; max length {max(data.lengths)}")
    assert len(data) == len(examples) and data.n_truncated == 0 and data.n_dropped == 0
    for example, item in zip(examples[:500], data, strict=False):
        prompt_ids = tiny_tokenizer(render_prompt(example, "alpaca"))["input_ids"]
        n_prompt = len(prompt_ids)
        assert item["input_ids"][:n_prompt] == prompt_ids
        assert item["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
        assert all(label != IGNORE_INDEX for label in item["labels"][n_prompt:])
        assert item["labels"][n_prompt:] == item["input_ids"][n_prompt:]
        assert item["attention_mask"] == [1] * len(item["input_ids"])
        assert tiny_tokenizer.decode(item["labels"][n_prompt:]) == example.output + "</s>"
        assert (
            tiny_tokenizer.decode(item["input_ids"])
            == render_prompt(example, "alpaca") + example.output + "</s>"
        )


def test_truncation_counts_on_a_small_max_length(alpaca_loaded, alpaca_tokenized, tiny_tokenizer):
    examples, _ = alpaca_loaded
    max_length = 128
    prompt_lengths = [len(tiny_tokenizer(render_prompt(e, "alpaca"))["input_ids"]) for e in examples]
    full_lengths = alpaca_tokenized.lengths
    expect_dropped = sum(1 for p in prompt_lengths if p >= max_length)
    expect_truncated = sum(1 for p, n in zip(prompt_lengths, full_lengths, strict=True) if p < max_length < n)
    data = tokenize_examples(examples, tiny_tokenizer, "alpaca", max_length=max_length)
    print(f"\nalpaca at max_length {max_length}: {data.summary()}")
    assert (data.n_dropped, data.n_truncated) == (expect_dropped, expect_truncated)
    assert expect_dropped > 0 and expect_truncated > 0
    assert len(data) == len(examples) - expect_dropped
    assert max(data.lengths) == max_length
    assert data.summary() == (
        f"{len(data)} examples, {expect_truncated} truncated to {max_length} tokens, "
        f"{expect_dropped} dropped (prompt alone reaches {max_length} tokens)"
    )
    eos = tiny_tokenizer.eos_token_id
    cut = [item for item in data if item["input_ids"][-1] != eos]
    assert len(cut) == expect_truncated
    assert all(len(item["input_ids"]) == max_length for item in cut)
    assert all(item["labels"][-1] != IGNORE_INDEX for item in data)


def test_truncation_cuts_the_response_end_and_keeps_eos_only_if_it_fits(tiny_tokenizer):
    example = Example("Sort 3 1 2", "", "1 2 3 and more words here", "t:row 0")
    prompt = tiny_tokenizer(render_prompt(example, "vicuna"))["input_ids"]
    response = tiny_tokenizer(example.output)["input_ids"]
    eos = tiny_tokenizer.eos_token_id
    exact = tokenize_examples([example], tiny_tokenizer, "vicuna", max_length=len(prompt) + len(response) + 1)
    assert exact[0]["input_ids"] == prompt + response + [eos] and exact.n_truncated == 0
    no_eos = tokenize_examples([example], tiny_tokenizer, "vicuna", max_length=len(prompt) + len(response))
    assert no_eos[0]["input_ids"] == prompt + response and no_eos.n_truncated == 1
    one = tokenize_examples([example], tiny_tokenizer, "vicuna", max_length=len(prompt) + 1)
    assert one[0]["labels"] == [IGNORE_INDEX] * len(prompt) + response[:1]
    n = len(prompt)
    with pytest.raises(
        DataError,
        match=rf"^t: every one of the 1 prompts \(vicuna template\) is at least "
        rf"max_length={n} tokens long \(the shortest is {n} tokens\).*raise data.max_length above {n}",
    ):
        tokenize_examples([example], tiny_tokenizer, "vicuna", max_length=n)
    # A prompt longer than max_length: the message gives its real length, the value to raise max_length above.
    with pytest.raises(
        DataError,
        match=rf"at least max_length={n - 3} tokens long \(the shortest is {n} tokens\).*raise data.max_length above {n} ",
    ):
        tokenize_examples([example], tiny_tokenizer, "vicuna", max_length=n - 3)


def test_sharegpt_tokenised_with_vicuna(shared_data, tiny_tokenizer):
    examples, report = load_examples(str(shared_data / SHAREGPT))
    data = tokenize_examples(examples, tiny_tokenizer, default_template(report.format), max_length=512)
    print(f"\nsharegpt tokenised: {data.summary()}")
    assert len(data) == 500 and data.n_dropped == 0
    for example, item in zip(examples, data, strict=True):
        n_prompt = item["labels"].count(IGNORE_INDEX)
        assert tiny_tokenizer.decode(item["input_ids"][:n_prompt]) == render_prompt(example, "vicuna")
        assert tiny_tokenizer.decode(item["labels"][n_prompt:]) == example.output + "</s>"


def test_special_token_text_in_data_is_not_a_special_token(tiny_tokenizer):
    example = Example("Write </s> literally", "", "Here: </s> done", "t:row 0")
    item = tokenize_examples([example], tiny_tokenizer, "alpaca")[0]
    assert item["input_ids"].count(tiny_tokenizer.eos_token_id) == 1
    assert item["input_ids"][-1] == tiny_tokenizer.eos_token_id


def test_bos_is_added_as_the_tokenizer_adds_it(tiny_tokenizer):
    """A tokenizer whose post-processor adds BOS (and EOS) gets exactly one BOS in front and no stray EOS."""
    import copy

    from tokenizers import processors

    tokenizer = copy.deepcopy(tiny_tokenizer)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", bos), ("</s>", eos)]
    )
    assert tokenizer("hi")["input_ids"][0] == bos and tokenizer("hi")["input_ids"][-1] == eos
    example = Example("Add 12 and 30", "", "42", "t:row 0")
    item = tokenize_examples([example], tokenizer, "alpaca")[0]
    plain = tiny_tokenizer(render_prompt(example, "alpaca"))["input_ids"]
    assert item["input_ids"] == [bos, *plain, *tiny_tokenizer("42")["input_ids"], eos]
    assert item["labels"][: len(plain) + 1] == [IGNORE_INDEX] * (len(plain) + 1)


def test_chat_template_tokens_are_the_whole_rendered_conversation(tiny_tokenizer):
    """template: chat trains on what the chat template renders for the conversation, not on a prompt plus the
    response and an appended EOS (issue 12); a template whose prompt is not the start of the full rendering
    (this one ignores the generation prompt and writes " ASSISTANT:" last) is refused, not guessed."""
    import copy

    tokenizer = copy.deepcopy(tiny_tokenizer)
    example = Example("Add 12 and 30", "", "42", "t:row 0")
    tokenizer.chat_template = "<s>{% for m in messages %}{{ m['content'] }}{% endfor %} ASSISTANT:"
    with pytest.raises(
        DataError, match="t:row 0: the tokenizer's chat template does not render conversations turn"
    ):
        tokenize_examples([example], tokenizer, "chat")
    tokenizer.chat_template = (
        "<s>{% for m in messages %}{% if m['role'] == 'user' %}{{ m['content'] }} ASSISTANT:"
        "{% else %}{{ m['content'] }}</s>{% endif %}{% endfor %}"
    )
    item = tokenize_examples([example], tokenizer, "chat")[0]
    messages = [{"role": "user", "content": "Add 12 and 30"}, {"role": "assistant", "content": "42"}]
    assert item["input_ids"] == tokenizer.apply_chat_template(messages)["input_ids"]
    assert (
        item["input_ids"].count(tokenizer.bos_token_id) == 1
        and item["input_ids"][0] == tokenizer.bos_token_id
    )
    assert item["input_ids"].count(tokenizer.eos_token_id) == 1
    n_prompt = item["labels"].count(IGNORE_INDEX)
    assert tokenizer.decode(item["input_ids"][:n_prompt]) == "<s>Add 12 and 30 ASSISTANT:"
    assert tokenizer.decode(item["labels"][n_prompt:]) == "42</s>"


def test_sentencepiece_style_response_starts_at_a_word_boundary():
    """With a LLaMA-like Metaspace tokenizer (BOS added, "▁" word marks) the separately tokenised response reads
    as "ASSISTANT: {response}", as in FastChat's training text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    example = Example("Add 12 and 30", "", "The sum is 42", "t:row 0")
    corpus = [render_prompt(example, "vicuna"), example.output] * 4
    tok.train_from_iterator(
        corpus,
        trainer=trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=["<unk>", "<s>", "</s>"],
            initial_alphabet=sorted(set("".join(corpus))),
        ),
    )
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    item = tokenize_examples([example], tokenizer, "vicuna")[0]
    assert (
        item["input_ids"].count(tokenizer.bos_token_id) == 1
        and item["input_ids"][0] == tokenizer.bos_token_id
    )
    text = tokenizer.decode(item["input_ids"], skip_special_tokens=True)
    assert text == render_prompt(example, "vicuna") + " The sum is 42"
