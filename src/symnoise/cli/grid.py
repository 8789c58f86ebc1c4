"""``symnoise grid GRID.yaml``: train and evaluate every cell of a grid, then build the papers' tables.

The whole grid file is validated (every cell's train config included) before anything runs. Re-running the same
command skips finished stages and continues unfinished cells; a failed cell is recorded and the grid goes on.
``--check`` validates and lists the cells; ``--print-commands`` shows each cell's training command.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("grid", type=Path, help="grid YAML (see configs/grid/)")
    parser.add_argument("--check", action="store_true", help="validate the grid and list its cells, then stop")
    parser.add_argument("--print-commands", action="store_true",
                        help="print the training command line of every cell, then stop")


def _list_cells(grid) -> None:
    from symnoise.grid import planned_stages, read_stages

    stages = planned_stages(grid)
    print(f"{grid.source}: valid, {len(grid.cells)} cells, stages: {', '.join(stages)}")
    for cell in grid.cells:
        done = [s for s in stages if s in read_stages(cell.run_dir)]
        print(f"  {cell.id}  ({len(done)}/{len(stages)} stages done)")


def _print_commands(grid) -> None:
    from symnoise.grid import accelerate_command

    for cell in grid.cells:
        config = cell.run_dir / "cell.yaml"
        if grid.spec.launcher.kind == "accelerate":
            print(" ".join(accelerate_command(grid.spec.launcher, config, resume=False)))
        else:
            print(f"symnoise train {config}")


def run(args: argparse.Namespace) -> int:
    from symnoise.grid import GridError, load_grid

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        grid = load_grid(args.grid)
    except GridError as error:
        print(f"symnoise grid: error: {error}", file=sys.stderr)
        return 2
    if args.check:
        _list_cells(grid)
        return 0
    if args.print_commands:
        _print_commands(grid)
        return 0
    from symnoise.evaluation.judge import JudgeInputError
    from symnoise.grid import run_grid

    try:
        outcome = run_grid(grid, log=lambda line: print(line, flush=True))
    except JudgeInputError as error:  # raised before any cell runs
        print(f"symnoise grid: error: {error}", file=sys.stderr)
        return 2
    for cell in outcome.failed:
        print(f"failed: {cell.cell} ({cell.stage}): {cell.error}", file=sys.stderr)
    where = outcome.report_dir or grid.output_dir
    print(f"{len(outcome.cells) - len(outcome.failed)}/{len(outcome.cells)} cells finished in "
          f"{outcome.seconds:.0f} s; summary {grid.output_dir / 'summary.md'}, report {where}")
    return 1 if outcome.failed else 0
