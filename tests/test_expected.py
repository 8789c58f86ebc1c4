"""Paper vs reproduced: a tiny grid whose cells hold known annotations, outputs and leaderboard scores, reported
with its companion expected file through the real `symnoise report --grid`; the layout is pinned cell by cell."""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from symnoise.evaluation.expected import load_expected
from symnoise.evaluation.runs import ReportError
from symnoise.grid import load_grid

PREFERENCES = {  # cell id -> the judge's preferences (2 model wins, 1 reference wins, 0 tie)
    "m7b-alpaca-none-a0-s0": [2, 1, 1, 0],
    "m7b-alpaca-neftune-a5-s0": [2, 2, 1, 2, 2],
    "m7b-alpaca-neftune-a15-s0": [1, 1, 1, 1],  # not the papers' alpha for Alpaca: never compared
}
OUTPUTS = {
    "m7b-alpaca-none-a0-s0": ["short", "also short"],
    "m7b-alpaca-neftune-a5-s0": ["a much longer answer here", "x" * 45],
}
ARC = {"m7b-alpaca-none-a0-s0": (0.5625, 0.0125)}

EXPECTED = {
    "paper": "Tiny paper, Table 9",
    "tables": [
        {
            "title": "win rates",
            "key": {"model": "org/M-7b", "metric": "win_rate"},
            "digits": 2,
            "columns": [
                {"label": "Alpaca", "dataset": "alpaca"},
                {"label": "Evol", "dataset": "evol-instruct"},
            ],
            "rows": [
                {"label": "base", "method": "base", "values": [30.0, 70.0]},
                {"label": "+NEFT", "method": "NEFT", "values": [64.69, None]},
                {"label": "released", "reproduce": False, "values": [71.37, None]},
            ],
        },
        {
            "title": "lengths and ARC",
            "key": {"dataset": "alpaca"},
            "digits": 1,
            "columns": [{"label": "base", "method": "base"}, {"label": "+NEFT", "variant": "NEFT 5"}],
            "rows": [
                {"label": "chars", "metric": "mean_chars", "digits": 0, "values": [375, 1061]},
                {"label": "ARC", "metric": "arc", "values": [56.4, 56.1]},
                {
                    "label": "win (chars)",
                    "metric": "win_rate_chars",
                    "digits": 2,
                    "values": [[48.26, 375], [62.55, 1062]],
                },
            ],
        },
    ],
}


def win_rate_and_error(preferences: list[int]) -> tuple[float, float]:
    """AlpacaEval 1's win rate and its standard error, written out independently of the code under test."""
    scores = [0.5 if p == 0 else p - 1.0 for p in preferences]
    return 100 * statistics.fmean(scores), 100 * statistics.stdev(scores) / math.sqrt(len(scores))


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")


@pytest.fixture
def tiny_grid(tmp_path) -> Path:
    """A grid of three cells (base, NEFT 5 and NEFT 15 on Alpaca) whose run directories are filled by hand."""
    train = tmp_path / "alpaca.jsonl"
    train.write_text('{"instruction": "Say hi.", "output": "hi"}\n', encoding="utf-8")
    grid_file = tmp_path / "tiny.yaml"
    grid_file.write_text(
        yaml.safe_dump(
            {
                "name": "tiny",
                "output_dir": str(tmp_path / "out"),
                "base": {
                    "model": {"name": "x"},
                    "data": {"path": "x", "format": "alpaca"},
                    "training": {"output_dir": "x", "report_to": []},
                },
                "axes": {
                    "model": [{"name": "m7b", "path": "org/M-7b"}],
                    "dataset": [{"name": "alpaca", "path": str(train), "format": "alpaca", "alpha": 5}],
                    "method": ["none", {"name": "neftune", "alpha": [5, 15]}],
                    "seed": [0],
                },
            }
        ),
        encoding="utf-8",
    )
    (tmp_path / "tiny.expected.yaml").write_text(yaml.safe_dump(EXPECTED), encoding="utf-8")
    grid = load_grid(grid_file)
    assert [c.id for c in grid.cells] == list(PREFERENCES)
    for cell in grid.cells:
        noise = cell.config.noise.to_dict()
        write_json(
            cell.run_dir / "symnoise_run.json",
            {"noise": noise, "model": "org/M-7b", "dataset": str(train), "format": "alpaca"},
        )
        write_json(
            cell.run_dir / "eval/annotations.json",
            [
                {
                    "instruction": f"q{i}",
                    "output_1": "ref",
                    "generator_1": "text_davinci_003",
                    "output_2": "out",
                    "generator_2": cell.id,
                    "annotator": "fake",
                    "preference": p,
                }
                for i, p in enumerate(PREFERENCES[cell.id])
            ],
        )
        if cell.id in OUTPUTS:
            write_json(
                cell.run_dir / "model_outputs.json",
                [
                    {"instruction": f"q{i}", "output": o, "generator": cell.id, "dataset": "toy"}
                    for i, o in enumerate(OUTPUTS[cell.id])
                ],
            )
        if cell.id in ARC:
            value, stderr = ARC[cell.id]
            write_json(
                cell.run_dir / "eval/leaderboard.json",
                {"tasks": {"arc": {"value": value, "stderr": stderr}}, "average": value},
            )
    return grid_file


def test_report_prints_the_papers_tables_beside_the_reproduced_numbers(tiny_grid, tmp_path):
    out = tmp_path / "report"
    result = subprocess.run(
        [sys.executable, "-m", "symnoise", "report", "--grid", str(tiny_grid), "--out", str(out), "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    base, base_se = win_rate_and_error(PREFERENCES["m7b-alpaca-none-a0-s0"])
    neft, neft_se = win_rate_and_error(PREFERENCES["m7b-alpaca-neftune-a5-s0"])
    assert (round(base, 2), round(neft, 2)) == (37.5, 80.0)
    base_chars = statistics.fmean(len(o) for o in OUTPUTS["m7b-alpaca-none-a0-s0"])
    neft_chars = statistics.fmean(len(o) for o in OUTPUTS["m7b-alpaca-neftune-a5-s0"])
    expected_lines = [
        "## Paper vs reproduced, win rates",
        "",
        "|  | Alpaca | Evol |",
        "|---|---:|---:|",
        f"| base | 30.00 / {base:.2f} ({base - 30:+.2f} ± {base_se:.2f}) | 70.00 / – |",
        f"| +NEFT | 64.69 / {neft:.2f} ({neft - 64.69:+.2f} ± {neft_se:.2f}) | – / – |",
        "| released | 71.37 / – | – / – |",
    ]
    markdown = result.stdout
    assert "\n".join(expected_lines) in markdown
    assert (
        "\n".join(
            [
                "## Paper vs reproduced, lengths and ARC",
                "",
                "|  | base | +NEFT |",
                "|---|---:|---:|",
                f"| chars | 375 / {base_chars:.0f} ({base_chars - 375:+.0f}) | 1061 / {neft_chars:.0f} ({neft_chars - 1061:+.0f}) |",
                f"| ARC | 56.4 / 56.2 ({56.25 - 56.4:+.1f} ± 1.2) | 56.1 / – |",  # 100 x the harness's 0.5625 +- 0.0125
                f"| win (chars) | 48.26 (375) / {base:.2f} ({base_chars:.0f}) ({base - 48.26:+.2f} ± {base_se:.2f}) | "
                f"62.55 (1062) / {neft:.2f} ({neft_chars:.0f}) ({neft - 62.55:+.2f} ± {neft_se:.2f}) |",
            ]
        )
        in markdown
    )
    assert "Note: paper: Tiny paper, Table 9; each cell: paper / reproduced" in markdown
    assert markdown.index("Paper vs reproduced") < markdown.index(
        "## Table 1"
    )  # the paper's tables come first
    comparisons = json.loads((out / "report.json").read_text())["comparisons"]
    by_cell = {(c["table"], c["row"], c["column"]): c for c in comparisons}
    neft_alpaca = by_cell[("win rates", "+NEFT", "Alpaca")]
    assert neft_alpaca["run"].endswith("m7b-alpaca-neftune-a5-s0")  # alpha 5, the papers' alpha, not 15
    assert neft_alpaca["difference"] == pytest.approx(neft - 64.69)
    assert neft_alpaca["standard_error"] == pytest.approx(neft_se)
    assert by_cell[("lengths and ARC", "ARC", "base")]["standard_error"] == pytest.approx(1.25)
    assert by_cell[("win rates", "released", "Alpaca")]["run"] is None


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda e: e["tables"][0]["rows"][0].update(values=[1.0]), "rows.0 (base): 1 values for 2 columns"),
        (lambda e: e["tables"][0]["rows"][0].update(metric="arc"), "metric is 'win_rate' in one part"),
        (lambda e: e["tables"][0]["key"].update(metric="bleu"), "tables.0.key.metric"),
        (
            lambda e: e["tables"][1]["rows"][2].update(values=[48.26, 62.55]),
            "win_rate_chars takes [win rate, characters]",
        ),
        (lambda e: e["tables"][0].update(colour="red"), "tables.0.colour"),
    ],
)
def test_a_bad_expected_file_names_the_field(tmp_path, change, message):
    data = json.loads(json.dumps(EXPECTED))
    change(data)
    path = tmp_path / "bad.expected.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(ReportError) as error:
        load_expected(path)
    assert str(path) in str(error.value) and message in str(error.value)
