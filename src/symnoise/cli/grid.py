"""``symnoise grid GRID.yaml``: train and evaluate every cell of a grid, then build the papers' tables.

The whole grid file is validated (every cell's train config included) before anything runs, and every evaluation
input is checked to be reachable before anything is trained. Re-running the same command skips finished stages
and continues unfinished cells; a failed cell is recorded and the grid goes on. ``--check`` lists the cells, a
stated estimate of GPUs and time per cell and every input with whether it is reachable (exit status 1 when one
is not); ``--print-commands`` prints one command per cell (``--cell ID``) for a cluster scheduler.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .options import add_flags


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("grid", type=Path, help="grid YAML (see configs/grid/)")
    add_flags(
        parser,
        {
            "--check": "validate the grid, list its cells with an estimate of GPUs and time, and every input "
            "that is unreachable; run nothing",
            "--print-commands": "print one command per cell (training and evaluation of that cell), then stop",
        },
    )
    parser.add_argument("--cell", metavar="ID", help="run only this cell (ids from --check)")
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        help="local data folder for the evaluation data (default: the grid's evaluation.data_dir, "
        "else $SYMNOISE_DATA_DIR, else the hub)",
    )


def run(args: argparse.Namespace) -> int:
    from symnoise.grid import GridError, load_grid

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        grid = load_grid(args.grid, data_dir=args.data_dir)
    except GridError as error:
        print(f"symnoise grid: error: {error}", file=sys.stderr)
        return 2
    if args.check:
        from symnoise.grid.check import check_lines

        lines, unreachable = check_lines(grid)
        print("\n".join(lines))
        return 1 if unreachable else 0
    if args.print_commands:
        from symnoise.grid.check import cell_commands

        print("\n".join(cell_commands(grid, str(args.grid), args.data_dir)))
        return 0
    from symnoise.evaluation.judge import JudgeInputError
    from symnoise.grid import run_grid

    try:
        outcome = run_grid(grid, log=lambda line: print(line, flush=True), only=args.cell)
    except (GridError, JudgeInputError) as error:  # raised before any cell runs
        print(f"symnoise grid: error: {error}", file=sys.stderr)
        return 2
    for cell in outcome.failed:
        print(f"failed: {cell.cell} ({cell.stage}): {cell.error}", file=sys.stderr)
    done = f"{len(outcome.cells) - len(outcome.failed)}/{len(outcome.cells)} cells finished in {outcome.seconds:.0f} s"
    if args.cell:
        print(
            f"{done}; once every cell is done, `symnoise grid {args.grid}` writes the summary and the report"
        )
    else:
        where = outcome.report_dir or grid.output_dir
        print(f"{done}; summary {grid.output_dir / 'summary.md'}, report {where}")
    return 1 if outcome.failed else 0
