"""``symnoise winrate --length-controlled``: AlpacaEval 2's length-controlled win rate by the alpaca_eval package.

The package's GLM needs ``df_gamed.csv`` from the hub dataset tatsu-lab/alpaca_eval (instruction difficulties and
two length-gamed baselines' annotations), which is not in ../shared/data. Offline, these tests check what can be
checked without it: the clear error; the package's own baseline rule (50 exactly, no data needed); and that, given
a table in df_gamed's format, symnoise hands the package exactly the rows and order it expects (same numbers as
calling the package directly). The published AE1 LC values are checked when ``SYMNOISE_ALPACA_EVAL_GAMED`` names a
real copy of df_gamed.csv.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest

from symnoise.cli.main import main
from symnoise.evaluation.length_control import LengthControlError, length_controlled_win_rate

pytest.importorskip("alpaca_eval")

AE = "alpaca_eval"
GAMED = os.environ.get("SYMNOISE_ALPACA_EVAL_GAMED")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def annotation_file(shared_data: Path, name: str) -> Path:
    return shared_data / AE / "annotations_alpaca_eval_gpt4" / f"{name}.json"


def synthetic_gamed_table(path: Path, n: int = 805, seed: int = 0) -> Path:
    """A table in df_gamed.csv's format (model, index, preference, std_delta_len, instruction_difficulty,
    not_gamed_baseline) with made-up values: two 'gamed' models, one row per instruction each."""
    rng = np.random.default_rng(seed)
    difficulty = rng.normal(size=n)
    rows = []
    for model in ("gamed_concise", "gamed_verbose"):
        for i in range(n):
            rows.append(
                {
                    "model": model,
                    "index": i,
                    "preference": float(rng.uniform()),
                    "std_delta_len": float(rng.normal()),
                    "instruction_difficulty": float(difficulty[i]),
                    "not_gamed_baseline": False,
                }
            )
    import pandas as pd

    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_offline_without_the_table_says_what_is_missing(shared_data, capsys):
    path = annotation_file(shared_data, "alpaca-7b-neft")
    with pytest.raises(LengthControlError, match="tatsu-lab/alpaca_eval, file df_gamed.csv.*--lc-data"):
        length_controlled_win_rate(path)
    assert main(["winrate", "--length-controlled", str(path)]) == 1
    assert "df_gamed.csv" in capsys.readouterr().err


def test_the_reference_against_itself_is_fifty_by_the_package_rule(tmp_path, shared_data):
    rows = json.loads(annotation_file(shared_data, "alpaca-7b").read_text())
    same = [
        {**r, "output_2": r["output_1"], "generator_2": r["generator_1"], "preference": 1.5} for r in rows
    ]
    path = tmp_path / "self.json"
    path.write_text(json.dumps(same))
    assert length_controlled_win_rate(path)["length_controlled_winrate"] == 50.0


def test_symnoise_gives_the_package_exactly_its_rows(tmp_path, shared_data, monkeypatch):
    import pandas as pd
    from alpaca_eval.metrics import glm_winrate

    table = synthetic_gamed_table(tmp_path / "df_gamed.csv")
    path = annotation_file(shared_data, "alpaca-7b-neft")
    ours = length_controlled_win_rate(path, table)

    monkeypatch.setattr(glm_winrate, "hf_hub_download", lambda **kwargs: str(table))
    direct = glm_winrate.get_length_controlled_winrate(
        pd.DataFrame(json.loads(path.read_text())), save_weights_dir=None
    )
    assert ours["length_controlled_winrate"] == direct["length_controlled_winrate"]
    assert ours["lc_standard_error"] == direct["lc_standard_error"]
    assert 0 < ours["length_controlled_winrate"] < 100

    shuffled = json.loads(path.read_text())[::-1]  # the row order carries the instruction index: it matters
    (tmp_path / "reversed.json").write_text(json.dumps(shuffled))
    assert length_controlled_win_rate(tmp_path / "reversed.json", table) != ours


def test_cli_adds_the_length_controlled_columns(tmp_path, shared_data, capsys):
    table = synthetic_gamed_table(tmp_path / "df_gamed.csv")
    path = annotation_file(shared_data, "alpaca-7b")
    assert main(["winrate", "--json", "--length-controlled", "--lc-data", str(table), str(path)]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert (
        row["length_controlled_winrate"]
        == length_controlled_win_rate(path, table)["length_controlled_winrate"]
    )
    assert main(["winrate", "--length-controlled", "--lc-data", str(table), str(path)]) == 0
    assert "lc_win_rate" in capsys.readouterr().out.splitlines()[0]
    assert main(["winrate", "--length-controlled", "--by", "dataset", str(path)]) == 1


@pytest.mark.skipif(not GAMED, reason="needs SYMNOISE_ALPACA_EVAL_GAMED=<copy of df_gamed.csv from the hub>")
def test_reproduces_the_published_alpaca_eval_1_length_controlled_values(shared_data):
    board_path = shared_data / AE / "leaderboards" / "AlpacaEval_1" / "alpaca_eval_gpt4_leaderboard.csv"
    with board_path.open() as handle:
        board = {row[""]: row for row in csv.DictReader(handle)}
    for name in ("alpaca-7b", "alpaca-7b-neft", "llama-2-chat-7b-evol70k-neft", "llama-2-7b-chat-hf"):
        lc = length_controlled_win_rate(annotation_file(shared_data, name), GAMED)[
            "length_controlled_winrate"
        ]
        assert lc == pytest.approx(float(board[name]["length_controlled_winrate"]), abs=1e-3), name
