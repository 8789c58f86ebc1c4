"""The one JSON-rows reader and the one folder publisher (`symnoise.files`) that every command shares."""

from __future__ import annotations

import json
import os

import pytest

from symnoise.files import FileFormatError, read_json_rows, read_placed_json_rows, write_dir_atomic

ROWS = [{"instruction": "a"}, {"instruction": "b"}]


@pytest.mark.parametrize(
    "name,text,expected",
    [
        ("rows.json", json.dumps(ROWS), [("row 0", ROWS[0]), ("row 1", ROWS[1])]),
        ("rows.jsonl", json.dumps(ROWS), [("row 0", ROWS[0]), ("row 1", ROWS[1])]),  # the text decides
        ("rows.jsonl", "\n".join(map(json.dumps, ROWS)) + "\n", [("line 1", ROWS[0]), ("line 2", ROWS[1])]),
        (
            "rows.json",
            json.dumps(ROWS[0]) + "\n\n" + json.dumps(ROWS[1]),
            [("line 1", ROWS[0]), ("line 3", ROWS[1])],
        ),
        ("lists.jsonl", "[1, 2]\n[3]\n", [("line 1", [1, 2]), ("line 2", [3])]),
        ("empty.json", "", []),
        ("blank.jsonl", "\n  \n", []),
    ],
)
def test_rows_and_where_they_stand(tmp_path, name, text, expected):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    assert read_placed_json_rows(path) == expected
    assert read_json_rows(path) == [row for _, row in expected]


class RowsError(ValueError):
    pass


@pytest.mark.parametrize(
    "name,text,message",
    [
        (
            "one.json",
            json.dumps({"instruction": "a"}),
            r"expected a JSON list of prompts or one per line, got dict",
        ),
        ("cut.json", '[{"instruction": "a"}', r"cut\.json: not valid JSON"),
        ("bad.jsonl", '{"instruction": "a"}\n{"instruction": \n', r"bad\.jsonl: line 2: not valid JSON"),
        ("missing.json", None, r"missing\.json: file not found"),
    ],
)
def test_bad_files_raise_the_callers_error_naming_file_and_line(tmp_path, name, text, message):
    path = tmp_path / name
    if text is not None:
        path.write_text(text, encoding="utf-8")
    with pytest.raises(RowsError, match=message):
        read_placed_json_rows(path, RowsError, what="prompts")
    assert issubclass(FileFormatError, ValueError)


def test_a_published_folder_replaces_the_old_one_whole(tmp_path):
    final = tmp_path / "model"
    write_dir_atomic(final, lambda folder: (folder / "old.txt").write_text("old"))
    write_dir_atomic(final, lambda folder: (folder / "new.txt").write_text("new"))
    assert sorted(p.name for p in final.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no staged or set-aside folder is left


def test_a_failed_write_leaves_the_old_folder_as_it_was(tmp_path):
    final = tmp_path / "model"
    write_dir_atomic(final, lambda folder: (folder / "weights").write_text("good"))

    def fail(folder):
        (folder / "weights").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_dir_atomic(final, fail)
    assert (final / "weights").read_text() == "good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert not any(name.startswith(f".model.partial-{os.getpid()}") for name in os.listdir(tmp_path))
