"""Win rates: golden values on hand-made preferences, input errors, and an exact reproduction of the published
AlpacaEval 1 GPT-4 leaderboard rows from the published annotation files."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from symnoise.cli.main import main
from symnoise.evaluation.winrate import AnnotationError, head_to_head, load_annotations, win_rates

AE = Path("alpaca_eval")


def write(path: Path, rows) -> Path:
    path.write_text(json.dumps(rows))
    return path


def annotation(preference, output="abc", generator="m", dataset="koala"):
    return {
        "instruction": "i",
        "output_1": "ref",
        "output_2": output,
        "generator_2": generator,
        "dataset": dataset,
        "preference": preference,
    }


def test_discrete_preferences_golden():
    # q = 1, 0, 0.5, 0.5, (null dropped), 1 -> mean 0.6; deviations .4 -.6 -.1 -.1 .4 -> sum of squares 0.70
    out = head_to_head([2, 1, 0, 1.5, None, 2])
    assert out["win_rate"] == pytest.approx(60.0)
    assert out["standard_error"] == pytest.approx(100 * math.sqrt(0.70 / 4 / 5))
    assert (out["n_wins"], out["n_wins_base"], out["n_draws"], out["n_total"]) == (2, 1, 2, 5)
    assert out["discrete_win_rate"] == pytest.approx(60.0)


def test_zero_and_one_point_five_are_the_same_draw():
    assert head_to_head([0, 2, 1]) == head_to_head([1.5, 2, 1])


def test_weighted_preferences_golden():
    # q = 0.2, 0.2, 0.9: win rate 43.33; rounded to 0, 0, 1: discrete 33.33; no exact draw
    out = head_to_head([1.2, 1.2, 1.9])
    assert out["win_rate"] == pytest.approx(130 / 3)
    assert out["discrete_win_rate"] == pytest.approx(100 / 3)
    assert (out["n_wins"], out["n_wins_base"], out["n_draws"], out["n_total"]) == (1, 2, 0, 3)


def test_all_null_gives_no_rate_rather_than_nan():
    out = head_to_head([None, None])
    assert out["win_rate"] is None and out["standard_error"] is None and out["n_total"] == 0


def test_avg_length_counts_null_rows_and_groups_by_generator_and_dataset(tmp_path):
    path = write(
        tmp_path / "a.json",
        [
            annotation(2, "x" * 10, "m1", "koala"),
            annotation(None, "x" * 20, "m1", "vicuna"),
            annotation(1, "x" * 3, "m2", "koala"),
            annotation(0, "x" * 30, "m1", "koala"),
        ],
    )
    m1, m2 = win_rates([path])
    assert (m1.generator, m1.n_total, m1.win_rate, m1.avg_length) == ("m1", 2, 75.0, 20.0)
    assert (m2.generator, m2.n_total, m2.win_rate, m2.avg_length) == ("m2", 1, 0.0, 3.0)
    split = win_rates([path], by_dataset=True)
    assert [(r.generator, r.dataset, r.n_total) for r in split] == [
        ("m1", "koala", 2),
        ("m1", "vicuna", 0),
        ("m2", "koala", 1),
    ]


@pytest.mark.parametrize(
    "content, message",
    [
        ({"preference": 1}, "expected a JSON list"),
        ([annotation(1), {"output_2": "a", "generator_2": "m"}], "row 1: missing field 'preference'"),
        ([annotation(1), annotation(1), annotation(3)], "row 2: field 'preference': 3 is out of range"),
        ([annotation(0.5)], "row 0: field 'preference': 0.5 is out of range"),
        ([annotation("2")], "row 0: field 'preference': expected a number or null"),
        ([annotation(True)], "row 0: field 'preference': expected a number or null"),
        ([{"preference": 1, "generator_2": "m"}], "row 0: missing field 'output_2'"),
    ],
)
def test_bad_input_names_file_row_and_field(tmp_path, content, message):
    path = write(tmp_path / "bad.json", content)
    with pytest.raises(AnnotationError, match="bad.json") as error:
        load_annotations(path)
    assert message in str(error.value)


def test_missing_dataset_only_matters_when_splitting(tmp_path):
    row = annotation(2)
    del row["dataset"]
    path = write(tmp_path / "a.json", [row])
    assert win_rates([path])[0].win_rate == 100.0
    with pytest.raises(AnnotationError, match="row 0: missing field 'dataset'"):
        win_rates([path], by_dataset=True)


def test_cli_errors_and_json(tmp_path, capsys):
    assert main(["winrate", str(tmp_path / "absent.json")]) == 1
    assert "absent.json: file not found" in capsys.readouterr().err
    bad = write(tmp_path / "bad.json", [annotation(2), annotation(7)])
    assert main(["winrate", str(bad)]) == 1
    assert "bad.json: row 1: field 'preference'" in capsys.readouterr().err

    good = write(tmp_path / "good.json", [annotation(2, dataset="koala"), annotation(1, dataset="oasst")])
    assert main(["winrate", "--json", "--by", "dataset", str(good)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["dataset"], r["win_rate"]) for r in rows] == [("koala", 100.0), ("oasst", 0.0)]
    assert main(["winrate", str(good), str(good)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["file", "generator", "win_rate"] and len(table) == 3


def leaderboard(shared_data: Path) -> dict[str, dict[str, str]]:
    path = shared_data / AE / "leaderboards" / "AlpacaEval_1" / "alpaca_eval_gpt4_leaderboard.csv"
    with path.open() as handle:
        return {row[""]: row for row in csv.DictReader(handle)}


def test_reproduces_published_alpaca_eval_1_leaderboard(shared_data):
    """Every published annotation file against its leaderboard row, all columns the annotations determine.

    The row is the one named by ``generator_2`` when the leaderboard has it, else by the file name: the NEFT
    file's generator_2 is a training-run name, and ``falcon-7b-instruct.json`` upstream holds the annotations of
    ``falcon-40b-instruct`` (the leaderboard gives both rows this win rate; only the 40b row's avg_length fits).
    Not checked: ``mode`` (not a metric) and ``length_controlled_winrate`` (needs alpaca_eval's fitted GLM).
    """
    board = leaderboard(shared_data)
    files = sorted((shared_data / AE / "annotations_alpaca_eval_gpt4").glob("*.json"))
    assert len(files) == 18
    report = []
    for path in files:
        (ours,) = win_rates([path])
        row = board.get(ours.generator) or board[path.stem]
        assert ours.win_rate == pytest.approx(float(row["win_rate"]), abs=1e-6), path.name
        assert ours.standard_error == pytest.approx(float(row["standard_error"]), abs=1e-6), path.name
        for column in ("n_wins", "n_wins_base", "n_draws", "n_total"):
            assert getattr(ours, column) == int(row[column]), (path.name, column)
        assert int(ours.avg_length) == int(row["avg_length"]), path.name
        if row.get("discrete_win_rate"):
            assert ours.discrete_win_rate == pytest.approx(float(row["discrete_win_rate"]), abs=1e-6), (
                path.name
            )
        report.append(f"{path.name:36s} {ours.win_rate:7.2f} {float(row['win_rate']):7.2f}")
    print("\n".join(["file  ours  published", *report]))


def test_papers_public_rows(shared_data):
    folder = shared_data / AE / "annotations_alpaca_eval_gpt4"
    expected = {
        "alpaca-7b": 26.46,
        "alpaca-7b-neft": 61.64,
        "llama-2-chat-7b-evol70k-neft": 81.86,
        "llama-2-7b-chat-hf": 71.37,
    }
    for stem, published in expected.items():
        (ours,) = win_rates([folder / f"{stem}.json"])
        assert round(ours.win_rate, 2) == published, stem


class _NoRequests:
    """A judge that is never asked: every output below equals its reference, a draw without a request."""

    judge_id, secrets = "never-asked", ()

    def complete(self, messages):
        raise AssertionError("no request expected")


def test_the_judges_own_metrics_file_is_skipped_with_one_line(tmp_path, capsys):
    """`symnoise winrate RUN/model_outputs_judged/*.json` reads the judge's annotations and skips, saying so, the
    metrics.json the judge writes beside them; any other file that is not annotations is still an error."""
    from symnoise import layout
    from symnoise.evaluation import judge as J
    from symnoise.evaluation.annotators import PAIRWISE_V1, load_annotator

    rows = [{"instruction": f"i{n}", "output": f"o{n}", "generator": "m", "dataset": "d"} for n in range(3)]
    outputs = write(tmp_path / "model_outputs.json", rows)
    judged = layout.judged_dir(outputs)
    J.judge_outputs(outputs, rows, _NoRequests(), judged, annotator=load_annotator(PAIRWISE_V1))
    files = sorted(str(p) for p in judged.glob("*.json"))
    assert [Path(f).name for f in files] == [layout.ANNOTATIONS, layout.JUDGE_METRICS]

    assert main(["winrate", *files]) == 0
    captured = capsys.readouterr()
    [skipped] = captured.err.splitlines()
    assert skipped.startswith("symnoise winrate: skipping ") and layout.JUDGE_METRICS in skipped
    table = captured.out.splitlines()
    assert len(table) == 2 and table[1].split()[:4] == [layout.ANNOTATIONS, "m", "50.00", "0.00"]

    other = write(tmp_path / "settings.json", {"win_rate": 50.0, "n_total": 3})  # not the judge's: an error
    assert main(["winrate", files[0], str(other)]) == 1
    assert "settings.json: expected a JSON list of annotations" in capsys.readouterr().err


def test_null_verdicts_are_counted_in_the_table_and_the_json(tmp_path, capsys):
    path = write(tmp_path / "a.json", [annotation(2), annotation(None), annotation(1), annotation(None)])
    [row] = win_rates([path])
    assert (row.n_total, row.n_null) == (2, 2)
    assert main(["winrate", str(path)]) == 0
    header, line = capsys.readouterr().out.splitlines()
    assert dict(zip(header.split(), line.split(), strict=True))["n_null"] == "2"
    assert main(["winrate", "--json", "--by", "dataset", str(path)]) == 0
    assert [r["n_null"] for r in json.loads(capsys.readouterr().out)] == [2]
