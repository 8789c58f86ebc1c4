"""The quickstart end to end on a tiny setting: run directories, the table, CLI checks and determinism."""

from __future__ import annotations

import dataclasses
import json
import math
import re

import pytest

from symnoise import quickstart
from symnoise.cli.main import main
from symnoise.quickstart import MethodScore, QuickstartSettings, format_table, run_quickstart, split_examples
from symnoise.synthetic import family_of

TINY = dict(
    n_pretrain=40,
    pretrain_steps=4,
    n_train=20,
    n_eval=10,
    epochs=1.0,
    batch_size=4,
    hidden_size=32,
    layers=1,
    heads=2,
    threads=1,
)


def tiny(tmp_path, name: str, **changes) -> QuickstartSettings:
    return QuickstartSettings(out_dir=tmp_path / name, **{**TINY, **changes})


def test_splits_are_disjoint_balanced_and_of_the_chosen_families():
    settings = QuickstartSettings(n_pretrain=50, n_train=25, n_eval=10, families=("capital", "date_to_iso"))
    pre, train, evaluation = split_examples(settings)
    assert (len(pre), len(train), len(evaluation)) == (50, 25, 10)
    keys = [[(e.instruction, e.input) for e in part] for part in (pre, train, evaluation)]
    assert len(set(keys[0]) | set(keys[1]) | set(keys[2])) == 85
    assert {family_of(e) for e in pre + train + evaluation} == {"capital", "date_to_iso"}
    assert sorted(family_of(e) for e in evaluation).count("capital") == 5


def test_unknown_family_is_refused():
    with pytest.raises(ValueError, match="unknown task families"):
        split_examples(QuickstartSettings(families=("capital", "telepathy")))


def test_cli_runs_end_to_end_and_writes_the_table(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(quickstart, "QuickstartSettings", lambda **kw: QuickstartSettings(**{**TINY, **kw}))
    out = tmp_path / "qs"
    assert main(["quickstart", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    results = (out / "results.md").read_text()
    assert results.strip() in printed
    for name in ("base", "none", "neftune", "symnoise"):
        assert (out / name / "model.safetensors").is_file(), name
    assert json.loads((out / "base" / "pretrain_summary.json").read_text())["steps"] == 4
    for method, stored in {"none": "none", "neftune": "uniform", "symnoise": "symnoise"}.items():
        summary = json.loads((out / method / "train_summary.json").read_text())
        assert summary["finished"] and summary["steps"] == 5  # 20 examples, batch 4, 1 epoch
        noise = json.loads((out / method / "symnoise_run.json").read_text())["noise"]
        assert (noise["method"], noise["alpha"]) == (stored, quickstart.METHOD_ALPHAS[method])
    table = next(block for block in results.split("\n\n") if block.startswith("| method"))  # the scores table
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in rows[0].strip("|").split("|")]
    assert header[:3] == ["method", "alpha", "exact match (n=10)"]
    assert set(quickstart.QUICKSTART_FAMILIES) <= set(header)
    body = {row.split("|")[1].strip(): row for row in rows[1:]}
    assert list(body) == ["none", "neftune", "symnoise"]
    assert re.match(r"\| symnoise \| 5 \| \d+\.\d% \|", body["symnoise"])
    assert re.match(r"\| none \| 0 \| \d+\.\d% \|", body["none"])
    for comparison in ("neftune - none", "symnoise - none", "symnoise - neftune"):
        assert re.search(rf"\| {comparison} \| [+-]\d+\.\d \| \[[+-]\d+\.\d, [+-]\d+\.\d\] \|", results)
    assert quickstart.CAVEAT in results


@pytest.mark.parametrize("methods", ["none,bogus", ",", "NEF-Tune"])
def test_cli_rejects_unknown_or_missing_methods(tmp_path, capsys, methods):
    out = tmp_path / "qs"
    assert main(["quickstart", "--out", str(out), "--methods", methods]) == 2
    message = capsys.readouterr().out
    assert "--methods" in message and "allowed: none, neftune, symnoise" in message
    assert not out.exists()


def test_cli_reads_method_names_case_insensitively(tmp_path, capsys):
    """The README spells NEFTune and SymNoise: accepted as neftune and symnoise (the next check, an existing --out
    without --fresh, stops the run before any training)."""
    out = tmp_path / "qs"
    out.mkdir()
    assert main(["quickstart", "--out", str(out), "--methods", "None,NEFTune,SymNoise"]) == 2
    message = capsys.readouterr().out
    assert "--methods" not in message and "--fresh" in message


def test_cli_refuses_an_existing_out_without_fresh(tmp_path, capsys):
    out = tmp_path / "qs"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert main(["quickstart", "--out", str(out), "--methods", "none"]) == 2
    assert "--fresh" in capsys.readouterr().out
    assert (out / "keep.txt").exists()


def test_two_runs_give_identical_scores(tmp_path):
    first = run_quickstart(tiny(tmp_path, "a", methods=("none", "symnoise")))
    second = run_quickstart(tiny(tmp_path, "b", methods=("none", "symnoise")))
    strip = [dataclasses.replace(s, seconds=0.0) for s in first]
    assert strip == [dataclasses.replace(s, seconds=0.0) for s in second]
    assert all(math.isfinite(s.eval_loss) and math.isfinite(s.train_loss) for s in first)
    # Noise changes training, so the two methods must not coincide (else the noise was never applied).
    assert first[0].eval_loss != first[1].eval_loss


def test_format_table_lists_every_method_and_family():
    scores = [
        MethodScore("none", 0.0, 0.5, 1.25, 1.5, 12.0, {"capital": 1.0, "date_to_iso": 0.0}),
        MethodScore("symnoise", 5.0, 0.25, 2.0, 2.5, 30.4, {"capital": 0.5, "date_to_iso": 0.0}),
    ]
    assert format_table(scores, 4).splitlines() == [
        "| method | alpha | exact match (n=4) | ± s.e. | capital | date_to_iso | answer loss | last train loss | train s |",
        "|---|---|---|---|---|---|---|---|---|",
        "| none | 0 | 50.0% | 25.0 | 100% | 0% | 1.250 | 1.500 | 12 |",
        "| symnoise | 5 | 25.0% | 21.7 | 50% | 0% | 2.000 | 2.500 | 30 |",
    ]


def test_differences_are_paired_over_the_same_instances():
    scipy_stats = pytest.importorskip("scipy.stats")
    none = [True, True, False, True, False, True, True, False, True, True]
    neft = [True, False, False, True, True, True, False, False, True, False]
    sym = list(none)
    scores = [
        MethodScore("none", 0.0, 0.7, 1.0, 1.0, 1.0, {}, tuple(none)),
        MethodScore("neftune", 5.0, 0.5, 1.0, 1.0, 1.0, {}, tuple(neft)),
        MethodScore("symnoise", 5.0, 0.7, 1.0, 1.0, 1.0, {}, tuple(sym)),
    ]
    found = {(d.a, d.b): d for d in quickstart.differences(scores)}
    assert list(found) == [("none", "neftune"), ("none", "symnoise"), ("neftune", "symnoise")]
    test = scipy_stats.ttest_rel([100.0 * h for h in neft], [100.0 * h for h in none])
    low, high = test.confidence_interval()
    d = found[("none", "neftune")]
    assert d.difference == pytest.approx(-20.0) and d.n == 10
    assert (d.ci_low, d.ci_high) == (pytest.approx(low, abs=1e-9), pytest.approx(high, abs=1e-9))
    assert "contains 0" in d.verdict  # [-49.1, +9.1]: ten instances cannot show a 20-point gap
    same = found[("none", "symnoise")]  # identical answers: exactly 0, no spread
    assert (same.difference, same.ci_low, same.ci_high) == (0.0, 0.0, 0.0)
