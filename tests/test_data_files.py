"""Every local file type `symnoise train` reads gives the same records as the JSON Lines file it was converted
from, goes through the same row checks (bad rows named by number), and a file whose content does not match its
name, or whose name is not a supported type, is refused naming both.

Also: an explicitly set `data.format` that the rows do not match names the format the rows look like.
"""

from __future__ import annotations

import csv
import gzip
import json
import shutil
from pathlib import Path

import pytest

from symnoise.data import DataError, load_records
from symnoise.data.formats import FILE_SUFFIXES

ROWS = [
    {"instruction": f"Add {a} and {b}.", "input": "" if a % 2 else f"{a} {b}", "output": str(a + b)}
    for a in range(5)
    for b in range(3)
] + [{"instruction": 'Quote "this",\nplease.', "input": "tab\there", "output": "done, 1.50"}]


def write_jsonl(path: Path, rows=ROWS) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def write_delimited(path: Path, rows=ROWS, delimiter=",") -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_gz(path: Path, text: str) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write(text)
    return path


def write_arrow(path: Path, rows=ROWS, stream=False) -> Path:
    import pyarrow as pa

    table = pa.Table.from_pylist(rows)
    opener = pa.ipc.new_stream if stream else pa.ipc.new_file
    with pa.OSFile(str(path), "wb") as sink, opener(sink, table.schema) as writer:
        writer.write_table(table)
    return path


def same_as_jsonl(tmp_path: Path, path: Path, rows=ROWS, **kwargs) -> None:
    """`path` loads to exactly the records (text and order) of the JSON Lines file of the same rows."""
    reference, reference_report = load_records(str(write_jsonl(tmp_path / "reference.jsonl", rows)))
    records, report = load_records(str(path), **kwargs)
    strip = [(r.instruction, r.input, r.output) for r in reference]
    assert [(r.instruction, r.input, r.output) for r in records] == strip
    assert (report.format, report.n_rows, report.n_loaded) == (reference_report.format, len(rows), len(rows))


@pytest.mark.parametrize("suffix", [".csv", ".tsv"])
def test_delimited_files_give_the_jsonl_examples(tmp_path, suffix):
    """Every cell is read as text: "3" stays "3" (not an int), "1.50" keeps its zero, an empty input is ""."""
    path = write_delimited(tmp_path / f"train{suffix}", delimiter="," if suffix == ".csv" else "\t")
    same_as_jsonl(tmp_path, path)


def test_csv_with_a_utf8_bom_and_windows_line_ends(tmp_path):
    path = tmp_path / "excel.csv"
    text = "instruction,input,output\r\nSay hi.,,hi\r\nCount to 2.,,1 2\r\n"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    rows = [
        {"instruction": "Say hi.", "input": "", "output": "hi"},
        {"instruction": "Count to 2.", "input": "", "output": "1 2"},
    ]
    same_as_jsonl(tmp_path, path, rows)


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".json.gz"])
def test_gzip_json_gives_the_jsonl_examples(tmp_path, suffix):
    text = (
        json.dumps(ROWS, indent=1)
        if suffix == ".json.gz"
        else "".join(json.dumps(row) + "\n" for row in ROWS)
    )
    same_as_jsonl(tmp_path, write_gz(tmp_path / f"train{suffix}", text))


@pytest.mark.parametrize("stream", [False, True], ids=["ipc-file", "ipc-stream"])
def test_arrow_file_gives_the_jsonl_examples(tmp_path, stream):
    same_as_jsonl(tmp_path, write_arrow(tmp_path / "train.arrow", stream=stream))


def test_save_to_disk_folder_gives_the_jsonl_examples(tmp_path):
    import datasets

    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "saved"))
    same_as_jsonl(tmp_path, tmp_path / "saved")
    splits = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(ROWS), "test": datasets.Dataset.from_list(ROWS[:2])}
    )
    splits.save_to_disk(str(tmp_path / "dict"))
    same_as_jsonl(tmp_path, tmp_path / "dict")
    same_as_jsonl(tmp_path, tmp_path / "dict", ROWS[:2], split="test")
    with pytest.raises(DataError, match=r"dict.*has no split 'validation'; its splits are test, train"):
        load_records(str(tmp_path / "dict"), split="validation")


def test_bad_rows_are_named_by_number_in_every_file_type(tmp_path):
    rows = ROWS[:3] + [{"instruction": "No answer.", "input": "", "output": ""}] + ROWS[3:5]
    import datasets

    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    paths = [
        write_delimited(tmp_path / "bad.csv", rows),
        write_delimited(tmp_path / "bad.tsv", rows, delimiter="\t"),
        write_gz(tmp_path / "bad.jsonl.gz", "".join(json.dumps(row) + "\n" for row in rows)),
        write_arrow(tmp_path / "bad.arrow", rows),
        tmp_path / "saved",
    ]
    for path in paths:
        with pytest.raises(DataError, match=r":row 3\b.*field 'output' is empty"):
            load_records(str(path))
        records, report = load_records(str(path), on_bad_row="skip")
        assert len(records) == 5 and report.skipped == {"empty output": 1}, path
    gz_line = r"bad.jsonl.gz:row 3 \(line 4\): field 'output' is empty"
    with pytest.raises(DataError, match=gz_line):
        load_records(str(paths[2]))


def test_a_csv_row_with_too_many_fields_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "ragged.csv"
    path.write_text("instruction,input,output\nSay hi.,,hi\nSay bye.,,bye,extra,more\n")
    with pytest.raises(DataError, match=r"ragged.csv: not a readable CSV file: .*line 3"):
        load_records(str(path))


@pytest.mark.parametrize(
    "name,content,looks_like",
    [
        ("train.parquet", b'[{"instruction": "a", "output": "b"}]', "JSON"),
        ("train.arrow", b'{"instruction": "a", "output": "b"}\n', "JSON"),
        ("train.json", b"PAR1\x15\x04\x15\x10\x15\x14L\x15\x02\x15\x00\x12\x00\x00", "Parquet"),
        ("train.jsonl", b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03", "gzip"),
        ("train.jsonl.gz", b'{"instruction": "a", "output": "b"}\n', "JSON"),
        ("train.csv", b"ARROW1\x00\x00\xff\xff\xff\xff", "Arrow"),
        ("train.csv", b'[{"instruction": "a", "output": "b"}]', "JSON"),
        ("train.json", b"PK\x03\x04\x14\x00\x00\x00", "zip"),
    ],
)
def test_content_that_does_not_match_the_extension_names_both(tmp_path, name, content, looks_like):
    path = tmp_path / name
    path.write_bytes(content)
    suffix = name[name.index(".") :]
    with pytest.raises(
        DataError, match=rf"{name}: the file is named {suffix} but its content looks like .*{looks_like}"
    ):
        load_records(str(path))


def test_real_parquet_named_json_names_both(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "real.parquet")
    shutil.copy(tmp_path / "real.parquet", tmp_path / "train.json")
    same_as_jsonl(tmp_path, tmp_path / "real.parquet")
    with pytest.raises(
        DataError, match=r"train.json: the file is named .json but its content looks like Parquet"
    ):
        load_records(str(tmp_path / "train.json"))


def test_unsupported_extension_and_plain_folder_list_what_is_read(tmp_path):
    path = tmp_path / "train.xlsx"
    path.write_bytes(b"PK\x03\x04")
    with pytest.raises(DataError) as error:
        load_records(str(path))
    message = str(error.value)
    assert "unsupported file type '.xlsx'" in message
    for suffix in (".json", ".jsonl", ".jsonl.gz", ".json.gz", ".parquet", ".arrow", ".csv", ".tsv"):
        assert suffix in message and suffix in FILE_SUFFIXES
    assert "save_to_disk" in message
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "notes.txt").write_text("x")
    with pytest.raises(
        DataError, match=r"folder: is a directory but not a dataset saved with datasets' save_to_disk"
    ):
        load_records(str(tmp_path / "folder"))


def test_json_and_jsonl_stay_off_the_datasets_path(tmp_path, monkeypatch):
    """JSON and JSON Lines (plain or gzip) are read by symnoise's own streaming reader: `datasets` is not
    imported for them (it costs seconds and writes a cache)."""
    import sys

    monkeypatch.setitem(sys.modules, "datasets", None)  # importing it now raises ImportError
    same_as_jsonl(tmp_path, write_jsonl(tmp_path / "a.jsonl"))
    same_as_jsonl(tmp_path, write_gz(tmp_path / "a.json.gz", json.dumps(ROWS)))


# ------------------------------------------------------------------------------------------------ format mismatch
SHAREGPT_ROWS = [
    {"conversations": [{"from": "human", "value": f"Hi {i}"}, {"from": "gpt", "value": f"Hello {i}"}]}
    for i in range(4)
]
MESSAGES_ROWS = [
    {"messages": [{"role": "user", "content": f"Hi {i}"}, {"role": "assistant", "content": f"Hello {i}"}]}
    for i in range(4)
]


@pytest.mark.parametrize(
    "rows,detected", [(SHAREGPT_ROWS, "sharegpt"), (MESSAGES_ROWS, "messages")], ids=["sharegpt", "messages"]
)
@pytest.mark.parametrize("on_bad_row", ["error", "skip"])
def test_an_explicit_format_the_rows_do_not_match_names_the_detected_one(
    tmp_path, rows, detected, on_bad_row
):
    path = write_jsonl(tmp_path / "chat.jsonl", rows)
    with pytest.raises(DataError) as error:
        load_records(str(path), format="alpaca", on_bad_row=on_bad_row)
    message = str(error.value)
    assert f"data.format is alpaca, but the rows look like {detected}" in message
    assert f"set data.format: auto (it detects {detected}) or data.format: {detected}" in message
    records, report = load_records(str(path), format="auto")
    assert report.format == detected and len(records) == 4


def test_an_explicit_format_that_fits_is_unchanged(tmp_path):
    """Compatible explicit formats still load as before: Evol-Instruct reads ShareGPT conversations, an Alpaca
    row is an Open-Platypus row without its bookkeeping key, and a merely bad first row is reported as a row."""
    chat = write_jsonl(tmp_path / "chat.jsonl", SHAREGPT_ROWS)
    assert len(load_records(str(chat), format="evol-instruct")[0]) == 4
    plain = write_jsonl(tmp_path / "plain.jsonl", ROWS)
    assert len(load_records(str(plain), format="openplatypus")[0]) == len(ROWS)
    first_bad = write_jsonl(tmp_path / "first_bad.jsonl", [{"instruction": "x", "input": ""}] + ROWS)
    with pytest.raises(DataError, match=r"first_bad.jsonl:row 0 \(line 1\): field 'output' is missing$"):
        load_records(str(first_bad), format="alpaca")


def test_new_file_types_are_tokenised_and_cached_like_jsonl(tmp_path, tiny_tokenizer, monkeypatch):
    """Training's path: a CSV file and a save_to_disk folder give the tokens of the JSON Lines file, and a
    second read comes from the cache, keyed by the folder's content."""
    import datasets

    from symnoise.data.prepare import DatasetSpec, prepare_dataset

    monkeypatch.setenv("SYMNOISE_CACHE", str(tmp_path / "cache"))
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "saved"))
    sources = [write_jsonl(tmp_path / "a.jsonl"), write_delimited(tmp_path / "a.csv"), tmp_path / "saved"]
    tokens = []
    for source in sources:
        dataset, report = prepare_dataset(DatasetSpec(str(source)), tiny_tokenizer, 512)
        again, cached = prepare_dataset(DatasetSpec(str(source)), tiny_tokenizer, 512)
        assert not report.cached and cached.cached
        assert [list(again[i]["input_ids"]) for i in range(len(again))] == [
            list(dataset[i]["input_ids"]) for i in range(len(dataset))
        ]
        tokens.append([list(dataset[i]["input_ids"]) for i in range(len(dataset))])
    assert tokens[0] == tokens[1] == tokens[2] and len(tokens[0]) == len(ROWS)
