"""``symnoise report``: the papers' tables (markdown) and plots against alpha (PNG) from finished run directories.

Where each piece of a run is looked for is listed in :mod:`symnoise.evaluation.runs`; missing pieces show as
"–". Writes ``report.md``, ``winrate_vs_alpha.png``, ``length_vs_alpha.png``, ``paired_differences.png`` (when two
methods of a dataset have a metric in common) and, with ``--json``, ``report.json`` into ``--out``, and prints the
markdown. The "Comparisons" section pairs methods prompt by prompt per training seed (``training.seed`` of each
run's ``config.yaml``) and over seeds (`symnoise.evaluation.comparisons`), with a verdict in words. ``--words N`` computes repetition and log-diversity (Table 5) on the first N
words for every dataset instead of the papers' N (50 Alpaca, 100 Evol-Instruct, 150 ShareGPT and OpenPlatypus).
``--expected FILE`` prints the papers' tables (an expected-numbers file, `symnoise.evaluation.expected`) first, each
cell "paper / reproduced (difference ± standard error)". ``--grid GRID.yaml`` reports the grid's trained cells and
reads its companion GRID.expected.yaml.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from symnoise.evaluation.expected import load_expected
from symnoise.evaluation.report import write_report
from symnoise.evaluation.runs import ReportError, find_run_dirs, load_runs, piece_names
from symnoise.evaluation.stats import MIN_WORDS, WORDS_PER_DATASET
from symnoise.layout import (
    CONFIG_FILE,
    EVAL_DIR,
    METRICS_LOG,
    REFERENCE_LOSS,
    RUN_INFO,
    TRAIN_SUMMARY,
    RunLayout,
)

from .options import fail


def words_argument(text: str) -> int:
    """``--words``: an integer of at least 5 (4-gram repetition needs 5 words); argparse names the flag on error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an integer of at least {MIN_WORDS}, got {text!r}"
        ) from None
    if value < MIN_WORDS:
        raise argparse.ArgumentTypeError(
            f"must be at least {MIN_WORDS} (4-grams need {MIN_WORDS} words), got {value}"
        )
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pieces = "; ".join(f"{piece}: {', '.join(names)}" for piece, names in piece_names().items())
    parser.epilog = (
        f"Looked for in each RUN_DIR: {RUN_INFO} (required), {TRAIN_SUMMARY}, {METRICS_LOG}; "
        f"{pieces} (the first found of each); for the comparisons also {CONFIG_FILE} (training.seed) and "
        f"{EVAL_DIR}/{REFERENCE_LOSS} (per-prompt held-out loss, written by `symnoise grid`)."
    )
    parser.add_argument(
        "runs",
        nargs="*",
        type=Path,
        metavar="RUN_DIR",
        help="run directories of `symnoise train`, or folders holding them (runs/*)",
    )
    parser.add_argument(
        "--grid",
        type=Path,
        metavar="GRID.yaml",
        help="report the grid's cells that have trained, next to its GRID.expected.yaml if any",
    )
    parser.add_argument(
        "--expected",
        type=Path,
        metavar="FILE.yaml",
        help="the papers' numbers (configs/grid/*.expected.yaml), printed beside the reproduced ones",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("report"),
        metavar="DIR",
        help="folder for report.md and the plots, paired_differences.png among them (default ./report)",
    )
    parser.add_argument("--json", action="store_true", help="also write a machine-readable DIR/report.json")
    parser.add_argument(
        "--words",
        type=words_argument,
        default=None,
        metavar="N",
        help="Table 5: 2-gram repetition and log-diversity on the first N words for every dataset "
        f"(at least {MIN_WORDS}; default the papers' N: "
        + ", ".join(f"{k} {v}" for k, v in WORDS_PER_DATASET.items())
        + "); outputs shorter than N are left out of them",
    )


def _grid_runs(grid_file: Path) -> tuple[list[Path], Path | None]:
    """The run directories of a grid's cells that have trained, and its companion expected file."""
    from symnoise.grid import GridError, load_grid
    from symnoise.grid.spec import expected_file

    try:
        grid = load_grid(grid_file)
    except GridError as error:
        raise ReportError(str(error)) from None
    trained = [cell.run_dir for cell in grid.cells if RunLayout(cell.run_dir).run_info.is_file()]
    if not trained:
        raise ReportError(
            f"{grid_file}: none of its {len(grid.cells)} cells has trained yet (under {grid.output_dir})"
        )
    return trained, expected_file(grid)


def run(args: argparse.Namespace) -> int:
    try:
        runs_dirs, expected = list(args.runs), args.expected
        if args.grid is not None:
            grid_runs, companion = _grid_runs(args.grid)
            runs_dirs += grid_runs
            expected = expected or companion
        runs_dirs, notes = find_run_dirs(runs_dirs)
        for note in notes:
            print(f"symnoise report: {note}", file=sys.stderr)
        runs = load_runs(runs_dirs, words=args.words)
        files = write_report(
            runs, args.out, json_summary=args.json, expected=load_expected(expected) if expected else None
        )
    except ReportError as error:
        return fail("report", error, 2)
    except OSError as error:
        return fail("report", f"cannot write to {args.out} ({error})", 1)
    print(files.markdown.read_text(encoding="utf-8"))
    written = [files.markdown, *files.plots] + ([files.json] if files.json else [])
    print("wrote " + ", ".join(str(p) for p in written), file=sys.stderr)
    return 0
