"""Length / repetition / log-diversity: golden values computed by hand on small strings, edge cases, and the
real NEFTune and Alpaca outputs of AlpacaEval."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from symnoise.cli.main import main
from symnoise.evaluation.stats import (
    OutputsError,
    file_stats,
    first_words,
    load_outputs,
    output_stats,
    repetition_and_diversity,
    words_for,
)

ALTERNATING = "a b a b a b"
# Counted n-grams skip the last one: 2-grams ab ba ab ba (2 unique of 4), 3-grams aba bab aba (2 of 3),
# 4-grams abab baba (2 of 2). diversity = (1 - 0.5/100)(1 - (1/3)/100)(1 - 0) = 0.995 * 299/300 = 59501/60000.
ALTERNATING_LOG_DIV = math.log(60000 / 499)
DISTINCT = "one two three four five six"


def test_golden_alternating_response():
    rep = repetition_and_diversity(ALTERNATING)
    assert rep.rep_2 == pytest.approx(0.5)
    assert rep.rep_3 == pytest.approx(1 / 3)
    assert rep.rep_4 == 0.0
    assert rep.diversity == pytest.approx(59501 / 60000, rel=1e-15)
    assert rep.log_diversity == pytest.approx(ALTERNATING_LOG_DIV, rel=1e-12)


def test_no_repeat_scores_the_cap_of_20():
    rep = repetition_and_diversity(DISTINCT)
    assert (rep.rep_2, rep.rep_3, rep.rep_4, rep.diversity) == (0.0, 0.0, 0.0, 1.0)
    assert rep.log_diversity == pytest.approx(20.0, abs=1e-12)


def test_last_ngram_is_skipped_like_the_reference_loop():
    # "x y" occurs twice, but the second is the last 2-gram, which the reference loop never counts.
    assert repetition_and_diversity("x y z x y").rep_2 == 0.0
    # With one more word the second "x y" is counted: 2-grams xy yz zx xy (3 unique of 4).
    assert repetition_and_diversity("x y z x y w").rep_2 == pytest.approx(0.25)


def test_truncation_and_whitespace():
    assert first_words("a\nb\t a  b a b c d", 6) == ALTERNATING
    assert first_words("too short", 6) is None
    assert first_words(DISTINCT, 6) == DISTINCT


def test_output_stats_golden():
    outputs = [ALTERNATING + " c d e", DISTINCT, "short text"]
    stats = output_stats(outputs, 6)
    assert stats.n_responses == 3 and stats.n_kept == 2 and stats.words == 6
    assert stats.mean_chars == pytest.approx((17 + 27 + 10) / 3)
    assert stats.mean_words == pytest.approx((9 + 6 + 2) / 3)
    assert stats.rep_2_pct == pytest.approx(100 * (0.5 + 0.0) / 2)
    assert stats.log_diversity == pytest.approx((ALTERNATING_LOG_DIV + 20) / 2)


def test_all_responses_too_short_gives_none_not_nan():
    stats = output_stats(["one two", "three"], 50)
    assert stats.n_kept == 0 and stats.rep_2_pct is None and stats.log_diversity is None
    assert stats.mean_words == 1.5


def test_words_per_dataset():
    assert [words_for(d, None) for d in ("alpaca", "evol-instruct", "sharegpt", "openplatypus")] == [
        50,
        100,
        150,
        150,
    ]
    assert words_for(None, None) == 50
    assert words_for("sharegpt", 20) == 20
    with pytest.raises(ValueError, match="at least 5"):
        words_for("alpaca", 4)


def write(path: Path, rows) -> Path:
    path.write_text(json.dumps(rows))
    return path


@pytest.mark.parametrize(
    "content, message",
    [
        ({"output": "x"}, "expected a JSON list"),
        ([{"output": "x"}, {"instruction": "i"}], "row 1: field 'output' missing"),
        ([{"output": 3}], "row 0: field 'output' not a string (int)"),
        ([], "holds no responses"),
    ],
)
def test_bad_input_names_file_row_and_field(tmp_path, content, message):
    path = write(tmp_path / "bad.json", content)
    with pytest.raises(OutputsError, match="bad.json") as error:
        file_stats([path], 50)
    assert message in str(error.value)


def test_cli_table_json_and_too_short_message(tmp_path, capsys):
    a = write(tmp_path / "a.json", [{"output": ALTERNATING, "generator": "ga"}, {"output": DISTINCT}])
    b = write(tmp_path / "b.json", [{"output": "one two", "generator": "gb"}])
    assert main(["stats", "--words", "6", str(a), str(b)]) == 0
    captured = capsys.readouterr()
    assert "b.json: no response has at least 6 words" in captured.err
    lines = captured.out.splitlines()
    assert lines[0].split() == ["a", "b"]
    assert lines[-1].split() == ["log-diversity", f"{(ALTERNATING_LOG_DIV + 20) / 2:.2f}", "-"]

    assert main(["stats", "--json", "--words", "6", str(a), str(b)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["generators"] == ["ga"] and rows[0]["rep_2_pct"] == pytest.approx(25.0)
    assert rows[1]["n_kept"] == 0 and rows[1]["rep_2_pct"] is None and rows[1]["log_diversity"] is None

    assert main(["stats", str(tmp_path / "absent.json")]) == 1
    assert "absent.json: file not found" in capsys.readouterr().err
    assert main(["stats", "--words", "3", str(a)]) == 1
    assert "at least 5" in capsys.readouterr().err


def test_real_alpaca_7b_and_neft_outputs(shared_data):
    """alpaca-7b vs alpaca-7b-neft (both LLaMA-1-7B on Alpaca; N = 50).

    Lengths and counts are properties of the files (mean chars 396 / 1067 as in the data README). The repetition
    bounds are the papers' LLaMA-2-7B range (rep-2 1.49-4.82 %, log-div 8.40-16.41) widened by about a quarter at
    each end, because these are LLaMA-1 models (measured: 5.03 % / 11.05 and 1.42 % / 16.45). They still catch a
    wrong definition: rep-2 as a fraction would be ~0.05, the pooled corpus-level variant gives log-div 1.4-3.8.
    Counting the last n-gram too would give 5.19 % / 10.79 and 1.46 % / 16.36: inside the bounds, so the values
    are also pinned to two decimals (a regression pin; the definition itself is fixed by the hand-made goldens).
    NEFTune reports that NEFT responses are much longer without being more repetitive; so do these files.
    """
    folder = shared_data / "alpaca_eval" / "model_outputs"
    base, neft = file_stats(
        [folder / "alpaca-7b.json", folder / "alpaca-7b-neft.json"], words_for("alpaca", None)
    )
    assert (base.n_responses, neft.n_responses) == (805, 805)
    assert int(base.mean_chars) == 396 and int(neft.mean_chars) == 1067
    assert (base.n_kept, neft.n_kept) == (468, 759)
    for stats in (base, neft):
        assert 1.0 <= stats.rep_2_pct <= 6.0, stats
        assert 8.0 <= stats.log_diversity <= 17.0, stats
    assert [
        round(v, 2) for v in (base.rep_2_pct, base.log_diversity, neft.rep_2_pct, neft.log_diversity)
    ] == [5.03, 11.05, 1.42, 16.45]
    assert neft.mean_chars > 2 * base.mean_chars and neft.mean_words > 2 * base.mean_words
    assert neft.rep_2_pct < base.rep_2_pct and neft.log_diversity > base.log_diversity
    print(
        f"\nalpaca-7b: chars {base.mean_chars:.1f} words {base.mean_words:.1f} kept {base.n_kept} "
        f"rep-2 {base.rep_2_pct:.2f}% log-div {base.log_diversity:.2f}"
    )
    print(
        f"alpaca-7b-neft: chars {neft.mean_chars:.1f} words {neft.mean_words:.1f} kept {neft.n_kept} "
        f"rep-2 {neft.rep_2_pct:.2f}% log-div {neft.log_diversity:.2f}"
    )


def test_load_outputs_generators(shared_data):
    outputs, generators = load_outputs(shared_data / "alpaca_eval" / "model_outputs" / "alpaca-7b.json")
    assert len(outputs) == 805 and generators == ["alpaca-7b"]


def test_columns_are_named_after_the_runs_when_every_file_has_the_same_name():
    from symnoise.evaluation.stats import column_names

    assert column_names(["runs/neft/model_outputs.json", "runs/symnoise/model_outputs.json"]) == [
        "neft",
        "symnoise",
    ]
    assert column_names(["a/x.json", "b/y.json"]) == ["x", "y"]
    assert column_names(["g/a/eval/m.json", "g/b/eval/m.json", "g/b/m.json"]) == [
        "a/eval/m",
        "b/eval/m",
        "g/b/m",
    ]
