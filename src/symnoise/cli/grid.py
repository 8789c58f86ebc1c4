"""``symnoise grid GRID.yaml``: train and evaluate every cell of a grid, then build the papers' tables.

The whole grid file is validated (every cell's train config included) before anything runs, and every evaluation
input is checked to be reachable before anything is trained. Re-running the same command skips finished stages
and continues unfinished cells; a failed cell is recorded and the grid goes on. ``--check`` lists the cells, a
stated estimate of GPUs and time per cell and every input with whether it is reachable (exit status 1 when one
is not); ``--print-commands`` prints one command per cell (``--cell ID``) for a cluster scheduler.

With ``launcher: {kind: slurm}`` the command submits every unfinished cell as a task of a Slurm job array
(`symnoise.grid.jobs`) and returns; ``--wait`` follows the jobs and writes the summary and the report when all
have ended, ``--status`` shows each cell's state (pending, running, requeued, finished, failed and why).
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
            "--status": "show each cell's state (with a Slurm launcher: its job, pending, running, requeued, "
            "finished or failed and why); run nothing",
            "--wait": "with a Slurm launcher: after submitting, follow the jobs until all have ended, then write "
            "the summary and the report",
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
    if grid.spec.launcher.kind == "slurm":
        return run_on_slurm(grid, args)
    if args.status:
        return print_local_status(grid)
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


def print_local_status(grid) -> int:
    """``--status`` without Slurm: each cell's state from its files."""
    from symnoise.grid.stages import is_finished, read_failure, read_stages

    for cell in grid.cells:
        failure = read_failure(cell.run_dir)
        state = "finished" if is_finished(grid, cell) else ("failed" if failure else "pending")
        detail = f"{failure['stage']}: {failure['error']}" if failure and state == "failed" else ""
        print(f"  {cell.id}  {state}  {len(read_stages(cell.run_dir))} stages  {detail}".rstrip())
    return 0


def run_on_slurm(grid, args: argparse.Namespace) -> int:
    """Submit (or, inside a cell's job, run that cell), follow, and report a grid whose launcher is Slurm."""
    import os
    import time

    from symnoise.grid import GridError
    from symnoise.grid import jobs as J
    from symnoise.grid.slurm import SlurmError

    def log(line: str) -> None:
        print(line, flush=True)

    started = time.perf_counter()
    try:
        if args.cell:
            if "SLURM_JOB_ID" not in os.environ:  # a user running one cell by hand: as any local cell
                return _run_one_cell(grid, args.cell)
            return J.run_cell_job(grid, args.cell, log)
        if args.status:
            print("\n".join(J.status_lines(grid, J.grid_states(grid, log))))
            return 0
        submission = J.submit_grid(grid, args.grid, args.data_dir, log)
        if not args.wait and (submission.submitted or submission.live):
            print(
                f"{len(submission.submitted)} cell(s) submitted, {len(submission.live)} already queued or running, "
                f"{len(submission.finished)} finished; `symnoise grid {args.grid} --status` shows where they stand, "
                f"`symnoise grid {args.grid} --wait` follows them and writes the summary"
            )
            return 0
        states = J.wait_for_grid(grid, log)
    except (GridError, SlurmError) as error:
        print(f"symnoise grid: error: {error}", file=sys.stderr)
        return 2
    report = J.finish_grid(grid, states, time.perf_counter() - started)
    failed = [s for s in states if s.state != "finished"]
    for s in failed:
        print(f"{s.state}: {s.cell} (job {s.job_id}): {s.detail}", file=sys.stderr)
    print(
        f"{len(states) - len(failed)}/{len(states)} cells finished; summary {grid.output_dir / 'summary.md'}, "
        f"report {report or grid.output_dir}"
    )
    return 1 if failed else 0


def _run_one_cell(grid, cell: str) -> int:
    from symnoise.grid import run_grid

    outcome = run_grid(grid, log=lambda line: print(line, flush=True), only=cell)
    return 1 if outcome.failed else 0
