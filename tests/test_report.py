"""`symnoise report`: fake run directories in the documented layout, filled with slices of the real published
AlpacaEval annotations and outputs; the table cells must equal what `winrate` and `stats` compute on the same files."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from symnoise.cli.main import main
from symnoise.config import NoiseConfig
from symnoise.evaluation.report import write_report
from symnoise.evaluation.runs import (
    ReportError,
    dataset_label,
    load_run,
    load_runs,
    method_label,
    variant_label,
)
from symnoise.evaluation.stats import file_stats
from symnoise.evaluation.tables import DASH, build_tables
from symnoise.evaluation.winrate import win_rates

AE = Path("alpaca_eval")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_json(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def make_run(root: Path, name: str, fmt: str = "alpaca", **noise) -> Path:
    """A run directory holding only what `symnoise train` writes first: symnoise_run.json."""
    run = root / name
    write_json(
        run / "symnoise_run.json",
        {
            "symnoise_version": "0.1.0",
            "template": "alpaca",
            "max_length": 512,
            "noise": NoiseConfig(**noise).to_dict(),
            "model": "meta-llama/Llama-2-7b-hf",
            "dataset": f"data/{fmt}.json",
            "format": fmt,
            "lora": False,
        },
    )
    return run


def write_slice(source: Path, target: Path, start: int, stop: int) -> Path:
    return write_json(target, json.loads(source.read_text(encoding="utf-8"))[start:stop])


def metrics_lines(run: Path, lines: list[dict]) -> None:
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")


def leaderboard(arc=None, hellaswag=None, mmlu=None) -> dict:
    tasks = {
        name: {"task": name, "value": value}
        for name, value in (("arc", arc), ("hellaswag", hellaswag), ("mmlu", mmlu))
        if value is not None
    }
    return {"checkpoint": "RUN", "mode": "offline", "tasks": tasks, "average": 0.0}


@pytest.fixture
def runs(tmp_path, shared_data):
    """Six runs over two datasets, each piece in one of the documented places, some pieces missing on purpose."""
    ann, outs = shared_data / AE / "annotations_alpaca_eval_gpt4", shared_data / AE / "model_outputs"
    root = tmp_path / "runs"
    base = make_run(root, "base-alpaca", method="none")
    write_slice(ann / "alpaca-7b.json", base / "eval" / "annotations.json", 0, 60)
    write_slice(outs / "alpaca-7b.json", base / "model_outputs.json", 0, 60)
    write_json(base / "train_summary.json", {"steps": 1218, "final_loss": 0.91234, "finished": True})
    metrics_lines(
        base,
        [
            {"step": 10, "loss": 1.5, "tokens_per_s": 100.0},
            {"step": 20, "loss": 1.2, "tokens_per_s": 400.0},
            {"step": 30, "loss": 1.0, "tokens_per_s": 200.0},
        ],
    )
    write_json(base / "eval" / "leaderboard.json", leaderboard(0.5, 0.75, 0.4))

    neft5 = make_run(root, "neft5-alpaca", method="uniform", alpha=5)
    write_slice(ann / "alpaca-7b-neft.json", neft5 / "model_outputs_judged" / "annotations.json", 0, 60)
    write_slice(outs / "alpaca-7b-neft.json", neft5 / "model_outputs.json", 0, 60)
    metrics_lines(neft5, [{"step": 5, "loss": 2.0}, {"step": 7, "loss": 1.75, "tokens_per_s": 50.0}])
    write_json(neft5 / "leaderboard.json", leaderboard(0.52, 0.76))

    neft10 = make_run(root, "neft10-alpaca", method="uniform", alpha=10)
    write_slice(ann / "alpaca-7b-neft.json", neft10 / "annotations.json", 60, 120)

    make_run(root, "gauss5-unmatched-alpaca", method="gaussian", alpha=5, match_uniform_norm=False)

    evol = make_run(root, "neft5-evol", fmt="evol-instruct", method="uniform", alpha=5)
    neft_evol = "llama-2-chat-7b-evol70k-neft.json"
    write_slice(ann / neft_evol, evol / "eval" / "model_outputs_judged" / "annotations.json", 0, 60)
    write_slice(outs / neft_evol, evol / "eval" / "model_outputs.json", 0, 60)

    sym = make_run(root, "symnoise5-evol", fmt="evol-instruct", method="symnoise", alpha=5)
    write_slice(outs / neft_evol, sym / "model_outputs.json", 60, 120)
    # Given out of the papers' order on purpose: the report must order rows and columns itself.
    return [sym, neft10, evol, base, root / "gauss5-unmatched-alpaca", neft5]


def only_row(path: Path):
    (row,) = win_rates([path])
    return row


def test_labels_follow_the_papers():
    assert [
        method_label(NoiseConfig(m, alpha=5))
        for m in ("none", "uniform", "gaussian", "bernoulli", "symnoise")
    ] == ["base", "NEFT", "Gaussian", "Bernoulli", "SymNoise"]
    assert method_label(NoiseConfig("gaussian", alpha=5, match_uniform_norm=False)) == "Gaussian (unmatched)"
    assert variant_label(NoiseConfig("neftune", alpha=5)) == "NEFT 5"
    assert variant_label(NoiseConfig("gaussian", alpha=5)) == "Gaussian 5/sqrt3"
    assert variant_label(NoiseConfig("gaussian", alpha=5, match_uniform_norm=False)) == "Gaussian 5"
    assert variant_label(NoiseConfig("bernoulli", alpha=5)) == "Bernoulli 5"
    assert variant_label(NoiseConfig("symnoise", alpha=2.5)) == "SymNoise 2.5"
    assert variant_label(NoiseConfig("none")) == "base"
    assert variant_label(NoiseConfig("symnoise", alpha=5, symmetric=False)) == "SymNoise 5 (one-sided)"
    assert dataset_label({"format": "sharegpt", "dataset": "x.json"}) == "sharegpt"
    assert dataset_label({"format": None, "dataset": "/data/my_set.jsonl"}) == "my_set"


def test_directory_without_run_file_is_an_error_naming_it(tmp_path, capsys):
    good = make_run(tmp_path, "good", method="none")
    stray = tmp_path / "not-a-run"
    stray.mkdir()
    with pytest.raises(ReportError, match="not-a-run: no symnoise_run.json"):
        load_runs([good, stray])
    assert main(["report", str(good), str(stray), "--out", str(tmp_path / "out")]) == 2
    assert f"{stray}: no symnoise_run.json" in capsys.readouterr().err
    assert not (tmp_path / "out" / "report.md").exists()


def test_unreadable_piece_is_an_error_naming_the_file(tmp_path):
    run = make_run(tmp_path, "r", method="none")
    (run / "annotations.json").write_text("{not json")
    with pytest.raises(ReportError, match=r"annotations\.json"):
        load_run(run)


def test_run_with_only_its_run_file_shows_dashes(tmp_path):
    run = load_run(make_run(tmp_path, "bare", method="symnoise", alpha=5))
    table_1, table_4, table_5, runs = build_tables([run])
    assert table_1.rows == [["+SymNoise", DASH]]
    assert table_4.rows == [["SymNoise 5", DASH]]
    assert {row[2] for row in table_5.rows} == {DASH}
    assert runs.rows == [["bare", "SymNoise 5", "Alpaca", "meta-llama/Llama-2-7b-hf", DASH, DASH, DASH, DASH]]
    assert "|---|---|---|---|---|---:|---:|---:|" in runs.to_markdown()


def test_table_1_cells_order_and_selection(runs):
    loaded = load_runs(runs)
    table_1 = build_tables(loaded)[0]
    assert table_1.header == ["method", "Alpaca", "Evol-Instruct"]
    assert [row[0] for row in table_1.rows] == ["base", "+NEFT", "+Gaussian (unmatched)", "+SymNoise"]
    base, neft5, evol = runs[3], runs[5], runs[2]
    assert table_1.cell("base", column="Alpaca") == f"{only_row(base / 'eval/annotations.json').win_rate:.2f}"
    neft5_rate = only_row(neft5 / "model_outputs_judged/annotations.json").win_rate
    assert table_1.cell("+NEFT", column="Alpaca") == f"{neft5_rate:.2f}"  # alpha 5, not the alpha 10 run
    evol_rate = only_row(evol / "eval/model_outputs_judged/annotations.json").win_rate
    assert table_1.cell("+NEFT", column="Evol-Instruct") == f"{evol_rate:.2f}"
    assert table_1.cell("base", column="Evol-Instruct") == DASH
    assert table_1.rows[2][1:] == [DASH, DASH] and table_1.rows[3][1:] == [DASH, DASH]
    assert len(table_1.notes) == 1 and "neft10-alpaca (NEFT 10, alpaca)" in table_1.notes[0]
    assert neft5_rate != only_row(runs[1] / "annotations.json").win_rate  # the selection is observable


def test_table_4_win_rate_and_length(runs):
    table_4 = build_tables(load_runs(runs))[1]
    assert [row[0] for row in table_4.rows] == ["base", "NEFT 5", "NEFT 10", "Gaussian 5", "SymNoise 5"]
    neft5, neft10 = runs[5], runs[1]
    rate = only_row(neft5 / "model_outputs_judged/annotations.json").win_rate
    (stats,) = file_stats([neft5 / "model_outputs.json"], 50)
    assert table_4.cell("NEFT 5", column="Alpaca") == f"{rate:.2f} ({stats.mean_chars:.0f})"
    # No outputs file: the length is that of the judged outputs in the annotation file.
    judged = only_row(neft10 / "annotations.json")
    assert table_4.cell("NEFT 10", column="Alpaca") == f"{judged.win_rate:.2f} ({judged.avg_length:.0f})"
    assert table_4.cell("NEFT 10", column="Evol-Instruct") == DASH
    assert table_4.cell("SymNoise 5", column="Evol-Instruct") == DASH  # outputs but no win rate
    assert table_4.cell("Gaussian 5", column="Alpaca") == DASH
    assert table_4.notes == []


def test_table_5_equals_stats_on_the_same_files(runs):
    table_5 = build_tables(load_runs(runs))[2]
    assert table_5.header == ["metric", "method", "Alpaca", "Evol-Instruct"]
    assert [tuple(row[:2]) for row in table_5.rows[:4]] == [
        ("mean chars", "base"),
        ("mean chars", "+NEFT"),
        ("mean chars", "+Gaussian (unmatched)"),
        ("mean chars", "+SymNoise"),
    ]
    (base,) = file_stats([runs[3] / "model_outputs.json"], 50)
    (sym,) = file_stats([runs[0] / "model_outputs.json"], 100)  # Evol-Instruct: first 100 words
    assert sym.n_kept > 0 and base.n_kept > 0
    for stats, method, column in ((base, "base", "Alpaca"), (sym, "+SymNoise", "Evol-Instruct")):
        assert table_5.cell("mean chars", method, column=column) == f"{stats.mean_chars:.1f}"
        assert table_5.cell("mean words", method, column=column) == f"{stats.mean_words:.1f}"
        assert table_5.cell("2-gram rep. %", method, column=column) == f"{stats.rep_2_pct:.2f}"
        assert table_5.cell("log-diversity", method, column=column) == f"{stats.log_diversity:.2f}"
    assert table_5.cell("log-diversity", "+Gaussian (unmatched)", column="Alpaca") == DASH
    assert table_5.cell("mean chars", "base", column="Evol-Instruct") == DASH


def test_table_5_note_states_the_papers_n_by_default(runs):
    table_5 = build_tables(load_runs(runs))[2]
    assert (
        table_5.notes[0] == "repetition and log-diversity on the first N words: Alpaca 50, Evol-Instruct 100"
    )
    assert not any("--words" in note for note in table_5.notes)  # every shown run has outputs long enough


def test_words_overrides_n_for_every_dataset(runs):
    loaded = load_runs(runs, words=20)
    table_5 = build_tables(loaded)[2]
    (base,) = file_stats([runs[3] / "model_outputs.json"], 20)
    (sym,) = file_stats([runs[0] / "model_outputs.json"], 20)  # Evol-Instruct too: 20, not the papers' 100
    (sym_100,) = file_stats([runs[0] / "model_outputs.json"], 100)
    assert sym.n_kept > sym_100.n_kept and sym.rep_2_pct != sym_100.rep_2_pct  # the override is observable
    for stats, method, column in ((base, "base", "Alpaca"), (sym, "+SymNoise", "Evol-Instruct")):
        assert table_5.cell("mean chars", method, column=column) == f"{stats.mean_chars:.1f}"
        assert table_5.cell("2-gram rep. %", method, column=column) == f"{stats.rep_2_pct:.2f}"
        assert table_5.cell("log-diversity", method, column=column) == f"{stats.log_diversity:.2f}"
    assert table_5.notes[0] == (
        "repetition and log-diversity on the first N words: Alpaca 20, Evol-Instruct 20 "
        "(set by --words; the papers' N: Alpaca 50, Evol-Instruct 100)"
    )
    assert {r.stats.words for r in loaded if r.stats} == {20}
    assert load_run(runs[0], words=20).stats == sym


def test_words_must_be_an_integer_of_at_least_5(runs, tmp_path, capsys):
    for bad in (4, 0, -1, 2.5, "20", True):
        with pytest.raises(ReportError, match="--words must be an integer of at least 5"):
            load_runs(runs, words=bad)
    for bad in ("4", "x", "7.5"):
        with pytest.raises(SystemExit) as exit_info:
            main(["report", *map(str, runs), "--out", str(tmp_path / "out"), "--words", bad])
        assert exit_info.value.code == 2
        assert "argument --words" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert len(load_runs(runs, words=5)) == len(runs)  # 5 words is enough for 4-grams


def short_outputs_run(root: Path, name: str, n_words: int, **noise) -> Path:
    """A run directory with 4 outputs of exactly ``n_words`` words each (like the mini grid's tiny model)."""
    run = make_run(root, name, **noise)
    texts = [" ".join(f"w{i}{j % 7}" for j in range(n_words)) for i in range(4)]
    write_json(
        run / "model_outputs.json",
        [{"instruction": f"q{i}", "output": t, "generator": name} for i, t in enumerate(texts)],
    )
    return run


def test_short_outputs_get_a_note_suggesting_words(tmp_path, capsys):
    runs = [
        short_outputs_run(tmp_path, "base", 12, method="none"),
        short_outputs_run(tmp_path, "neft", 15, method="uniform", alpha=5),
    ]
    table_5 = build_tables(load_runs(runs))[2]
    assert table_5.cell("mean words", "+NEFT", column="Alpaca") == "15.0"
    assert table_5.cell("2-gram rep. %", "+NEFT", column="Alpaca") == DASH
    assert table_5.cell("log-diversity", "base", column="Alpaca") == DASH
    (note,) = [n for n in table_5.notes if "--words" in n]
    assert note.startswith(
        "no output is at least N words long, so 2-gram repetition and log-diversity are blank"
    )
    assert f"{runs[0]} (Alpaca: N 50, 4 outputs of 12.0 words on average)" in note
    assert f"{runs[1]} (Alpaca: N 50, 4 outputs of 15.0 words on average)" in note
    assert "`symnoise report --words N`" in note
    out = tmp_path / "out"
    assert main(["report", *map(str, runs), "--out", str(out)]) == 0
    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert f"Note: {note}" in markdown

    # With --words 10 both runs' outputs count: numbers, and no such note.
    assert main(["report", *map(str, runs), "--out", str(out), "--words", "10"]) == 0
    markdown = (out / "report.md").read_text(encoding="utf-8")
    (stats,) = file_stats([runs[1] / "model_outputs.json"], 10)
    assert stats.n_kept == 4
    assert f"| log-diversity | +NEFT | {stats.log_diversity:.2f} |" in markdown
    assert "no output is at least N words long" not in markdown
    assert "first N words: Alpaca 10 (set by --words; the papers' N: Alpaca 50)" in markdown
    capsys.readouterr()


def test_short_note_only_names_runs_with_outputs_and_none_long_enough(tmp_path):
    runs = load_runs(
        [
            short_outputs_run(tmp_path, "long", 60, method="none"),
            short_outputs_run(tmp_path, "short", 8, method="uniform", alpha=5),
            make_run(tmp_path, "no-outputs", method="symnoise", alpha=5),
        ]
    )
    notes = build_tables(runs)[2].notes
    (note,) = [n for n in notes if "--words" in n]
    assert str(tmp_path / "short") in note
    assert str(tmp_path / "long") not in note and "no-outputs" not in note


def test_leaderboard_and_runs_tables(runs):
    _, _, _, board, runs_table = build_tables(load_runs(runs))
    assert board.header == ["dataset", "variant", "run", "ARC", "HellaSwag", "MMLU", "average"]
    assert board.rows == [
        ["Alpaca", "base", "base-alpaca", "50.00", "75.00", "40.00", "55.00"],
        ["Alpaca", "NEFT 5", "neft5-alpaca", "52.00", "76.00", DASH, DASH],
    ]
    base = runs_table.rows[3]
    assert base == [
        "base-alpaca",
        "base",
        "Alpaca",
        "meta-llama/Llama-2-7b-hf",
        "annotations, outputs, leaderboard",
        "1218",
        "0.9123",
        "200.0",
    ]
    neft5 = runs_table.rows[5]  # no train_summary.json: steps and loss of the last logged line
    assert neft5[5:] == ["7", "1.7500", "50.0"]


def test_no_leaderboard_table_without_scores(tmp_path):
    tables = build_tables([load_run(make_run(tmp_path, "r", method="none"))])
    assert [t.title.split(":")[0] for t in tables] == ["Table 1", "Table 4", "Table 5", "Runs"]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_cli_writes_markdown_plots_and_json(runs, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", *map(str, runs), "--out", str(out), "--json"]) == 0
    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert capsys.readouterr().out.strip() == markdown.strip()
    neft5_rate = only_row(runs[5] / "model_outputs_judged/annotations.json").win_rate
    evol_rate = only_row(runs[2] / "eval/model_outputs_judged/annotations.json").win_rate
    assert f"| +NEFT | {neft5_rate:.2f} | {evol_rate:.2f} |" in markdown
    assert "| +Gaussian (unmatched) | – | – |" in markdown
    for name in ("winrate_vs_alpha.png", "length_vs_alpha.png"):
        width, height = png_size(out / name)
        assert width > 100 and height > 100
        assert f"]({name})" in markdown
    summary = json.loads((out / "report.json").read_text(encoding="utf-8"))
    by_name = {Path(r["path"]).name: r for r in summary["runs"]}
    assert by_name["neft5-alpaca"]["win_rate"]["win_rate"] == neft5_rate
    assert by_name["gauss5-unmatched-alpaca"]["win_rate"] is None
    assert by_name["neft5-evol"]["files"]["outputs"].endswith("eval/model_outputs.json")
    assert [t["title"].split(":")[0] for t in summary["tables"]] == [
        "Table 1",
        "Table 4",
        "Table 5",
        "Open LLM Leaderboard (%)",
        "Runs",
    ]


def test_plots_are_written_even_without_any_score(tmp_path):
    files = write_report([load_run(make_run(tmp_path, "r", method="none"))], tmp_path / "out")
    assert [p.name for p in files.plots] == ["winrate_vs_alpha.png", "length_vs_alpha.png"]
    assert all(png_size(p)[0] > 0 for p in files.plots) and files.json is None


def test_folders_holding_runs_are_expanded_and_a_folder_without_runs_is_named(tmp_path):
    """`symnoise report runs/*` after the quickstart: runs/quickstart holds runs one level down and its base model
    is not a run; a folder that holds no run at all is still an error naming it."""
    import subprocess
    import sys

    root = tmp_path / "runs"
    for name in ("none", "neftune"):
        make_run(root / "quickstart", name, method="uniform" if name == "neftune" else "none", alpha=5.0)
    (root / "quickstart" / "base").mkdir()
    (root / "quickstart" / "base" / "config.json").write_text("{}")
    make_run(root, "mine", method="symnoise", alpha=5.0)

    def report(out: str) -> subprocess.CompletedProcess:
        paths = sorted(map(str, root.iterdir()))
        command = [sys.executable, "-m", "symnoise", "report", *paths, "--out", str(tmp_path / out)]
        return subprocess.run(command, capture_output=True, text=True)

    proc = report("r")
    assert proc.returncode == 0, proc.stderr
    assert (
        "runs/quickstart: not a run directory; reporting the 2 runs inside it (neftune, none)" in proc.stderr
    )
    text = (tmp_path / "r" / "report.md").read_text()
    assert all(f"| {name} |" in text for name in ("none", "neftune", "mine"))
    (root / "notes").mkdir()
    empty = report("r2")
    assert empty.returncode == 2 and f"{root / 'notes'}: no symnoise_run.json" in empty.stderr
    assert not (tmp_path / "r2" / "report.md").exists()
