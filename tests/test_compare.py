"""``symnoise compare``: paired differences between two judged runs, checked against an independent computation
(numpy over the paired rows, scipy's paired t-test) on the published AlpacaEval 1 annotations, through the real
command, on run directories, on bad input; and the seed-level aggregation against scipy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from symnoise.cli.main import main
from symnoise.evaluation.paired import (
    PairingError,
    bootstrap_interval,
    compare,
    seed_difference,
    seed_summary,
    t_quantile,
)
from symnoise.evaluation.stats import repetition_and_diversity
from symnoise.evaluation.winrate import head_to_head, load_annotations

pytestmark = pytest.mark.slow  # multi-process, subprocess or whole-pipeline tests: `make test` only

scipy_stats = pytest.importorskip("scipy.stats")

FOLDER = "alpaca_eval/annotations_alpaca_eval_gpt4"
TOL = 1e-9


@pytest.fixture(scope="module")
def files(shared_data) -> tuple[Path, Path]:
    return shared_data / FOLDER / "alpaca-7b.json", shared_data / FOLDER / "alpaca-7b-neft.json"


def score(preference) -> float:
    """Independent q-mapping: 1 -> 0, 2 -> 1, 0 (draw) -> 0.5, as in AlpacaEval's published files."""
    return 0.5 if preference == 0 else float(preference) - 1


def independent(a_rows, b_rows, value):
    """numpy + scipy over rows paired by (dataset, instruction): difference, SE, 95% interval, n."""
    b_by = {(r["dataset"], r["instruction"]): r for r in b_rows}
    pairs = [(r, b_by[(r["dataset"], r["instruction"])]) for r in a_rows]
    pairs = [(x, y) for x, y in pairs if value(x) is not None and value(y) is not None]
    a = np.array([value(x) for x, _ in pairs], dtype=float)
    b = np.array([value(y) for _, y in pairs], dtype=float)
    d = b - a
    ci = scipy_stats.ttest_rel(b, a).confidence_interval(0.95)
    return d.mean(), d.std(ddof=1) / np.sqrt(len(d)), ci.low, ci.high, len(d)


def assert_matches(block, expected):
    difference, se, low, high, n = expected
    assert block["n"] == n
    for key, want in zip(
        ("difference", "standard_error", "ci_low", "ci_high"), (difference, se, low, high), strict=True
    ):
        assert block[key] == pytest.approx(want, abs=TOL), key


def test_published_annotations_match_an_independent_paired_t_test(files):
    a_path, b_path = files
    a_rows, b_rows = json.loads(a_path.read_text()), json.loads(b_path.read_text())
    result = compare(a_path, b_path)

    win = lambda r: None if r["preference"] is None else 100 * score(r["preference"])  # noqa: E731
    expected = independent(a_rows, b_rows, win)
    assert_matches(result["win_rate"], expected)
    assert_matches(result, expected)  # the top-level names are the win rate's
    print(
        f"\nalpaca-7b-neft - alpaca-7b: difference {result['difference']:.4f}, SE {result['standard_error']:.4f}, "
        f"95% CI [{result['ci_low']:.4f}, {result['ci_high']:.4f}], n {result['n']} "
        f"(A {result['win_rate']['a']:.4f}, B {result['win_rate']['b']:.4f})"
    )

    # The published numbers over each file's own non-null prompts, as a sanity anchor.
    assert round(head_to_head(a.preference for a in load_annotations(a_path))["win_rate"], 2) == 26.46
    assert round(head_to_head(a.preference for a in load_annotations(b_path))["win_rate"], 2) == 61.64
    # neft has 2 nulls, alpaca-7b none: both sides drop those 2 prompts, and the difference is b - a there.
    wins = result["win_rate"]
    assert (wins["n"], wins["left_out"], wins["null_a"], wins["null_b"]) == (803, 2, 0, 2)
    assert wins["difference"] == pytest.approx(wins["b"] - wins["a"], abs=TOL)
    kept = [(x, y) for x, y in zip(a_rows, b_rows, strict=True) if y["preference"] is not None]
    assert wins["a"] == pytest.approx(100 * np.mean([score(x["preference"]) for x, _ in kept]), abs=TOL)
    assert wins["b_better"] == sum(score(y["preference"]) > score(x["preference"]) for x, y in kept)
    assert wins["a_better"] == sum(score(y["preference"]) < score(x["preference"]) for x, y in kept)

    assert_matches(result["length_chars"], independent(a_rows, b_rows, lambda r: len(r["output_2"])))
    assert_matches(result["length_words"], independent(a_rows, b_rows, lambda r: len(r["output_2"].split())))

    def rep(r):
        words = r["output_2"].split()
        return 100 * repetition_and_diversity(" ".join(words[:50])).rep_2 if len(words) >= 50 else None

    assert_matches(result["repetition_2gram"], independent(a_rows, b_rows, rep))
    assert result["length_controlled"] is None and "df_gamed.csv" in result["length_controlled_note"]


def test_no_nulls_difference_is_the_difference_of_win_rates(shared_data):
    a_path = shared_data / FOLDER / "alpaca-7b.json"
    b_path = shared_data / FOLDER / "llama-2-7b-chat-hf.json"  # both without nulls
    wins = compare(a_path, b_path)["win_rate"]
    assert wins["n"] == 805 and wins["left_out"] == 0
    assert wins["a"] == pytest.approx(26.46, abs=0.005) and wins["b"] == pytest.approx(71.37, abs=0.005)
    whole = [head_to_head(a.preference for a in load_annotations(p))["win_rate"] for p in (a_path, b_path)]
    assert wins["difference"] == pytest.approx(whole[1] - whole[0], abs=TOL)


def command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "symnoise", "compare", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_command_prints_the_same_numbers(files):
    a_path, b_path = files
    done = command(a_path, b_path, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == json.loads(json.dumps(compare(a_path, b_path)))

    result = json.loads(done.stdout)
    plain = command(a_path, b_path)
    assert plain.returncode == 0, plain.stderr
    for key in ("difference", "standard_error", "ci_low", "ci_high"):
        assert f"{result[key]:.2f}" in plain.stdout
    assert "803" in plain.stdout and "2 prompts left out" in plain.stdout
    assert "length-controlled win rate: not computed" in plain.stdout
    assert "does not show a difference" not in plain.stdout.split("win rate:")[0]
    usage = command("--help")
    assert usage.returncode == 0 and "t(0.975, n-1)" in usage.stdout and "%%" not in usage.stdout


def test_an_interval_containing_zero_is_said_in_plain_words(files, tmp_path):
    a_path, _ = files
    rows = json.loads(a_path.read_text())
    win = next(i for i, r in enumerate(rows) if r["preference"] == 2)
    loss = next(i for i, r in enumerate(rows) if r["preference"] == 1)
    swapped = [
        dict(r) for r in rows
    ]  # B wins one prompt that A lost and loses one that A won: d = +100, -100
    swapped[win]["preference"], swapped[loss]["preference"] = 1, 2
    (tmp_path / "b.json").write_text(json.dumps(swapped))
    result = compare(a_path, tmp_path / "b.json")
    assert result["difference"] == 0 and result["ci_low"] < 0 < result["ci_high"]
    done = command(a_path, tmp_path / "b.json")
    assert done.returncode == 0, done.stderr
    assert "win rate (%): the data does not show a difference at 95% (the interval contains 0)" in done.stdout


def make_run(root: Path, rows: list) -> Path:
    (root / "model_outputs_judged").mkdir(parents=True)
    (root / "symnoise_run.json").write_text(json.dumps({"noise": {"method": "none"}}))
    (root / "model_outputs_judged" / "annotations.json").write_text(json.dumps(rows))
    return root


def test_run_directories(files, tmp_path):
    a_path, b_path = files
    a_rows, b_rows = json.loads(a_path.read_text())[:120], json.loads(b_path.read_text())[:120]
    run_a, run_b = make_run(tmp_path / "base", a_rows), make_run(tmp_path / "neft", b_rows)
    (tmp_path / "a.json").write_text(json.dumps(a_rows))
    (tmp_path / "b.json").write_text(json.dumps(b_rows))
    from_dirs = compare(run_a, run_b)
    assert from_dirs["a"] == str(run_a / "model_outputs_judged" / "annotations.json")
    win = lambda r: None if r["preference"] is None else 100 * score(r["preference"])  # noqa: E731
    assert_matches(from_dirs, independent(a_rows, b_rows, win))
    done = command(run_a, run_b, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["difference"] == pytest.approx(from_dirs["difference"], abs=TOL)


def bad(tmp_path, a, b) -> tuple[int, str]:
    done = command(a, b)
    return done.returncode, done.stderr


def test_bad_input_is_named(files, tmp_path):
    a_path, b_path = files
    rows = json.loads(b_path.read_text())
    other_reference = [dict(r) for r in rows]
    other_reference[7]["output_1"] += " (edited)"
    (tmp_path / "other_ref.json").write_text(json.dumps(other_reference))
    code, err = bad(tmp_path, a_path, tmp_path / "other_ref.json")
    assert code == 2
    assert str(a_path) in err and str(tmp_path / "other_ref.json") in err and "different references" in err
    assert rows[7]["instruction"][:40] in err

    (tmp_path / "fewer.json").write_text(json.dumps(rows[:800]))
    code, err = bad(tmp_path, a_path, tmp_path / "fewer.json")
    assert (
        code == 2
        and "different prompt sets" in err
        and str(a_path) in err
        and str(tmp_path / "fewer.json") in err
    )
    assert "5 prompts only in the first" in err

    outputs = a_path.parents[1] / "model_outputs" / "alpaca-7b.json"
    code, err = bad(tmp_path, outputs, b_path)
    assert code == 2 and str(outputs) in err and "is not an annotation" in err and "'output_1'" in err

    (tmp_path / "empty_run").mkdir()
    code, err = bad(tmp_path, tmp_path / "empty_run", b_path)
    assert code == 2 and str(tmp_path / "empty_run") in err and "no annotations found" in err
    assert "model_outputs_judged/annotations.json" in err

    with pytest.raises(PairingError, match="file not found"):
        compare(tmp_path / "missing.json", b_path)


def test_bootstrap_is_seeded_and_agrees_with_the_t_interval(files):
    a_path, b_path = files
    result = compare(a_path, b_path, bootstrap=2000, seed=3)
    boot = result["win_rate"]["bootstrap"]
    assert boot == compare(a_path, b_path, bootstrap=2000, seed=3)["win_rate"]["bootstrap"]
    assert abs(boot["ci_low"] - result["ci_low"]) < 1.0 and abs(boot["ci_high"] - result["ci_high"]) < 1.0
    with pytest.raises(ValueError):
        bootstrap_interval([1.0], [2.0], 100, 0)


def test_length_controlled_difference_is_the_packages_per_prompt_glm(shared_data, tmp_path, monkeypatch):
    pytest.importorskip("alpaca_eval")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from test_length_control import synthetic_gamed_table

    from symnoise.evaluation.length_control import length_controlled_win_rate

    table = synthetic_gamed_table(tmp_path / "df_gamed.csv")
    a_path = shared_data / FOLDER / "alpaca-7b.json"
    b_path = shared_data / FOLDER / "llama-2-7b-chat-hf.json"  # no nulls: every prompt is paired
    lc = compare(a_path, b_path, length_controlled=True, gamed_data=table)["length_controlled"]
    whole = [length_controlled_win_rate(p, table)["length_controlled_winrate"] for p in (a_path, b_path)]
    assert lc["n"] == 805
    assert lc["a"] == pytest.approx(whole[0], abs=TOL) and lc["b"] == pytest.approx(whole[1], abs=TOL)
    assert lc["difference"] == pytest.approx(whole[1] - whole[0], abs=TOL)
    assert (
        main(
            [
                "compare",
                str(a_path),
                str(b_path),
                "--length-controlled",
                "--lc-data",
                str(tmp_path / "no.csv"),
            ]
        )
        == 1
    )


# ------------------------------------------------------------------------------------------------- seeds


def test_t_quantiles_match_scipy():
    # lgamma's cancellation costs digits for huge df (documented in t_quantile): 1e-11 up to 5000, 1e-8 beyond.
    for df, rel in ((1, 1e-11), (2, 1e-11), (3.5, 1e-11), (7, 1e-11), (30, 1e-11), (804, 1e-11), (5000, 1e-11),
                    (1e5, 1e-8), (1e6, 1e-8)):  # fmt: skip
        for p in (0.6, 0.9, 0.975, 0.995):
            assert t_quantile(p, df) == pytest.approx(scipy_stats.t.ppf(p, df), rel=rel), (p, df)
            assert t_quantile(1 - p, df) == pytest.approx(scipy_stats.t.ppf(1 - p, df), rel=rel), (p, df)


def test_one_seed_has_no_interval():
    summary = seed_summary([61.2])
    assert summary == (61.2, None, None, None, 1)
    assert "undefined" in summary.note
    mean, sd, low, high, n = summary
    for paired in (True, False):
        diff = seed_difference([1.0], [2.0], paired_by_seed=paired)
        assert (
            diff.difference == 1.0
            and diff.ci_low is None
            and diff.ci_high is None
            and "undefined" in diff.note
        )
    with pytest.raises(ValueError):
        seed_summary([])


def test_three_seeds_match_scipy():
    a, b = [61.2, 63.0, 62.1], [64.9, 65.5, 66.8]
    summary = seed_summary(a)
    ci = scipy_stats.ttest_1samp(a, 0).confidence_interval(0.95)
    assert summary.n == 3 and summary.note is None
    assert summary.mean == pytest.approx(np.mean(a), abs=TOL) and summary.sd == pytest.approx(
        np.std(a, ddof=1)
    )
    assert (summary.ci_low, summary.ci_high) == pytest.approx((ci.low, ci.high), abs=TOL)

    paired = seed_difference(a, b, paired_by_seed=True)
    ci = scipy_stats.ttest_rel(b, a).confidence_interval(0.95)
    assert (paired.method, paired.df) == ("paired", 2)
    assert (paired.ci_low, paired.ci_high) == pytest.approx((ci.low, ci.high), abs=TOL)

    welch = seed_difference(a, b + [63.1], paired_by_seed=False)
    test = scipy_stats.ttest_ind(b + [63.1], a, equal_var=False)
    ci = test.confidence_interval(0.95)
    assert welch.method == "welch" and welch.df == pytest.approx(test.df, abs=TOL)
    assert welch.difference == pytest.approx(np.mean(b + [63.1]) - np.mean(a), abs=TOL)
    assert (welch.ci_low, welch.ci_high) == pytest.approx((ci.low, ci.high), abs=TOL)
    with pytest.raises(ValueError, match="one value per seed"):
        seed_difference(a, b + [63.1], paired_by_seed=True)
