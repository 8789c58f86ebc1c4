"""A grid on Slurm (``launcher: {kind: slurm}``): submitting the unfinished cells, following them, and the cell's
side of its job.

Every cell is one task of a job array; its job runs ``symnoise grid GRID --cell ID`` (training and every
evaluation stage, resumably, as a local run of that cell would). Each cell's directory keeps its Slurm history in
``slurm_jobs.jsonl`` (`symnoise.layout.SLURM_JOBS`), one event a line, appended by the submitter and by the job::

    submitting   before sbatch: the array's job name and the cell's index in it
    submitted    the job id (ARRAY_TASK), its log, the batch script
    started      the job began (again, after a requeue: SLURM_RESTART_COUNT), on which host
    preempted    the job got its notice, saved a checkpoint and requeued itself

A cell is submitted again only when it is not finished and Slurm holds no live job for it: a re-run of
``symnoise grid GRID`` (after a crash of the submitter, a failed cell fixed, or a job that ended early) leaves
pending and running jobs alone. A submission interrupted between sbatch and its record is found again by the
array's job name. ``OUTPUT/slurm/`` holds the batch scripts and one log per array task.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ..files import append_json_lines, read_json_lines, write_json_atomic, write_text_atomic
from ..layout import RunLayout
from ..train.reliability import last_complete_checkpoint
from ..train.trainer import TrainingStopped, request_stop
from . import slurm
from .cells import Cell
from .layout import GridLayout
from .runner import StaleCellError, check_not_stale, prepare, run_grid, write_cell_config
from .sections import GridError, slug
from .spec import Grid
from .stages import is_finished, read_failure, read_stages, write_failure
from .summary import write_grid_report

SLURM_DIR = "slurm"  # OUTPUT/slurm/: batch scripts and the jobs' logs
Log = Callable[[str], None]
MAX_MISSED_POLLS = 10  # --wait gives up after this many polls in a row that Slurm did not answer


def slurm_dir(grid: Grid) -> Path:
    return GridLayout(grid.output_dir).root / SLURM_DIR


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------- records


def record_event(run_dir: Path, event: str, **fields) -> None:
    """Append one event to the cell's ``slurm_jobs.jsonl`` (a durable append: the submitter and the job both
    write, never rewriting each other's lines)."""
    append_json_lines(RunLayout(run_dir).slurm_jobs, [{"event": event, "at": _now(), **fields}])


@dataclass
class CellJobs:
    """A cell's Slurm history, folded from its events."""

    job_id: str | None = None  # the last job submitted for it (ARRAY_TASK)
    pending_name: str | None = None  # a submission whose job id was never recorded: the array's name
    pending_index: int | None = None
    submitted: list[str] = field(default_factory=list)
    starts: int = 0  # times the last job started (1 + requeues)
    preemptions: int = 0
    log: str | None = None


def read_jobs(run_dir: Path) -> CellJobs:
    path = RunLayout(run_dir).slurm_jobs
    jobs = CellJobs()
    rows = read_json_lines(path, error=GridError) if path.is_file() else []
    for row in rows:
        event = row.get("event")
        if event == "submitting":
            jobs.pending_name, jobs.pending_index = row["job_name"], row["index"]
        elif event == "submitted":
            jobs.job_id, jobs.log, jobs.pending_name = row["job_id"], row.get("log"), None
            jobs.submitted.append(row["job_id"])
            jobs.starts = jobs.preemptions = 0
        elif event == "started" and row.get("job_id") == jobs.job_id:
            jobs.starts += 1
        elif event == "preempted" and row.get("job_id") == jobs.job_id:
            jobs.preemptions += 1
    return jobs


def adopt_interrupted(cell: Cell, jobs: CellJobs, live: dict[str, slurm.JobState], log: Log) -> CellJobs:
    """A submission cut between sbatch and its record: the job, if Slurm still holds it, is the cell's."""
    if jobs.pending_name is None:
        return jobs
    for job in live.values():
        if job.name == jobs.pending_name and job.job_id.endswith(f"_{jobs.pending_index}"):
            record_event(cell.run_dir, "submitted", job_id=job.job_id, adopted=True)
            log(f"[{cell.id}] found its job {job.job_id}, submitted before an interruption")
            return read_jobs(cell.run_dir)
    return jobs


# ------------------------------------------------------------------------------------------------ state


@dataclass(frozen=True)
class CellState:
    """One cell as `--status` shows it."""

    cell: str
    state: str  # finished | pending | running | requeued | failed | not submitted
    job_id: str | None
    detail: str


def cell_state(grid: Grid, cell: Cell, jobs: CellJobs, live: dict[str, slurm.JobState], ended) -> CellState:
    """The cell's state from its files and, for its last job, what Slurm says (``ended(job_id)``: the final state
    of a job no longer queued, or None)."""
    job = live.get(jobs.job_id) if jobs.job_id else None
    if is_finished(grid, cell):
        return CellState(cell.id, "finished", jobs.job_id, f"{len(read_stages(cell.run_dir))} stages")
    if job is not None and job.live:
        restarts = f"; preempted {jobs.preemptions}x" if jobs.preemptions else ""
        if job.state == "PENDING":
            state = "requeued" if jobs.starts else "pending"
            return CellState(cell.id, state, job.job_id, f"{job.reason or 'waiting'}{restarts}")
        where = f"on {job.nodes}" if job.nodes else job.state.lower()
        started = f"; started {jobs.starts}x" if jobs.starts > 1 else ""
        return CellState(cell.id, "running", job.job_id, f"{where}{started}{restarts}")
    failure = read_failure(cell.run_dir)
    if failure is not None:
        return CellState(cell.id, "failed", jobs.job_id, f"{failure['stage']}: {failure['error']}")
    if jobs.job_id is None:
        return CellState(cell.id, "not submitted", None, "")
    final = ended(jobs.job_id)
    if final is None:
        return CellState(cell.id, "failed", jobs.job_id, "its job ended without finishing the cell")
    reason = f" ({final.reason})" if final.reason else ""
    return CellState(cell.id, "failed", jobs.job_id, f"job ended {final.state}{reason}")


def grid_states(grid: Grid, log: Log = print) -> list[CellState]:
    """Every cell's state, asking Slurm once for the live jobs and, for ended ones, their final state."""
    slurm.require_commands("squeue", "scontrol")
    live = slurm.live_jobs()
    cache: dict[str, slurm.JobState | None] = {}

    def ended(job_id: str) -> slurm.JobState | None:
        if job_id not in cache:
            cache[job_id] = slurm.ended_jobs([job_id]).get(job_id)
        return cache[job_id]

    states = []
    for cell in grid.cells:
        jobs = adopt_interrupted(cell, read_jobs(cell.run_dir), live, log)
        states.append(cell_state(grid, cell, jobs, live, ended))
    return states


def status_lines(grid: Grid, states: list[CellState]) -> list[str]:
    counts: dict[str, int] = {}
    for s in states:
        counts[s.state] = counts.get(s.state, 0) + 1
    head = f"{grid.source}: {len(states)} cells: " + ", ".join(f"{n} {state}" for state, n in counts.items())
    width = max((len(s.cell) for s in states), default=4)
    rows = [f"  {'cell':<{width}}  {'state':<13}  {'job':<10}  detail"]
    rows += [f"  {s.cell:<{width}}  {s.state:<13}  {s.job_id or '-':<10}  {s.detail}" for s in states]
    return [head, *rows]


def write_slurm_status(grid: Grid, states: list[CellState]) -> None:
    """``OUTPUT/status.json`` with each cell's Slurm job and state."""
    rows = [
        {
            "cell": s.cell,
            "status": s.state,
            "job_id": s.job_id,
            "detail": s.detail,
            "run_dir": str(GridLayout(grid.output_dir).cell_dir(s.cell)),
        }
        for s in states
    ]
    write_json_atomic(GridLayout(grid.output_dir).status, {"grid": grid.source, "cells": rows})


# ------------------------------------------------------------------------------------------- submission


@dataclass
class Submission:
    submitted: list[str]
    live: list[str]
    finished: list[str]
    stale: list[str]
    array_job: str | None = None


def job_command(grid_file: Path, data_dir: str | None) -> list[str]:
    command = [sys.executable, "-m", "symnoise", "grid", str(grid_file.resolve())]
    return command + (["--data-dir", str(Path(data_dir).resolve())] if data_dir else [])


def check_launcher(grid: Grid, options: list[str], script_text: str) -> None:
    """Slurm is installed and the controller accepts the job as configured (``sbatch --test-only``); raises
    `GridError` naming the launcher, before anything is written or submitted."""
    try:
        slurm.require_commands("sbatch", "squeue", "scontrol")
        with tempfile.TemporaryDirectory(prefix="symnoise-sbatch-") as folder:
            script = Path(folder) / "check.sh"
            script.write_text(script_text, encoding="utf-8")
            slurm.check_submission(options, script)
    except slurm.SlurmError as error:
        raise GridError(f"{grid.source}: launcher: {error}") from None


def submit_grid(grid: Grid, grid_file: Path, data_dir: str | None, log: Log = print) -> Submission:
    """Submit every cell that is neither finished nor held by a live job, as one job array."""
    launcher = grid.spec.launcher
    token = uuid.uuid4().hex[:8]
    job_name = f"symnoise-{slug(grid.spec.name or Path(grid.source).stem)}-{token}"
    folder = slurm_dir(grid).resolve()
    options = slurm.sbatch_options(launcher, job_name, str(folder / "%A_%a.out"), Path.cwd())
    title = f"symnoise grid {grid.source}"
    check_launcher(
        grid, options + [slurm.array_option(1, None)], slurm.batch_script(["true"], ["x"], [], title)
    )
    live = slurm.live_jobs()
    result = Submission([], [], [], [])
    todo: list[Cell] = []
    for cell in grid.cells:
        jobs = adopt_interrupted(cell, read_jobs(cell.run_dir), live, log)
        if is_finished(grid, cell):
            result.finished.append(cell.id)
        elif jobs.job_id in live and live[jobs.job_id].live:
            result.live.append(cell.id)
            log(f"[{cell.id}] job {jobs.job_id} is {live[jobs.job_id].state.lower()}: left as it is")
        else:
            todo.append(cell)
    if not todo:
        return result
    prepare(grid, log)
    ready = []
    for cell in todo:
        try:
            check_not_stale(grid, cell, read_stages(cell.run_dir))
        except StaleCellError as error:
            write_failure(cell.run_dir, "submit", f"StaleCellError: {error}", "")
            log(f"[{cell.id}] not submitted: {error}")
            result.stale.append(cell.id)
            continue
        write_cell_config(cell)
        ready.append(cell)
    if not ready:
        return result
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / f"{job_name}.sh"
    write_text_atomic(
        script,
        slurm.batch_script(job_command(grid_file, data_dir), [c.id for c in ready], launcher.setup, title),
    )
    for index, cell in enumerate(ready):
        record_event(cell.run_dir, "submitting", job_name=job_name, index=index)
    try:
        array = slurm.submit(options + [slurm.array_option(len(ready), launcher.max_parallel)], script)
    except slurm.SlurmError as error:
        raise GridError(f"{grid.source}: launcher: {error}") from None
    for index, cell in enumerate(ready):
        job_id = f"{array}_{index}"
        record_event(
            cell.run_dir, "submitted", job_id=job_id, log=str(folder / f"{job_id}.out"), script=str(script)
        )
        result.submitted.append(cell.id)
    result.array_job = array
    log(f"submitted {len(ready)} cell(s) as job array {array} ({job_name}); logs in {folder}")
    return result


# ------------------------------------------------------------------------------------------------ waiting


def record_slurm_failures(grid: Grid, states: list[CellState]) -> None:
    """A cell whose job ended without a recorded failure (time limit, out of memory, cancelled) gets one, so the
    summary shows why it did not finish."""
    for cell, state in zip(grid.cells, states, strict=True):
        if state.state == "failed" and read_failure(cell.run_dir) is None:
            write_failure(cell.run_dir, "slurm", f"job {state.job_id}: {state.detail}", "")


def finish_grid(grid: Grid, states: list[CellState], seconds: float) -> Path | None:
    """Once no cell has a live job: the failures Slurm knows of, ``status.json``, the summary and the report."""
    record_slurm_failures(grid, states)
    write_slurm_status(grid, states)
    return write_grid_report(grid, {}, seconds)


def wait_for_grid(grid: Grid, log: Log = print) -> list[CellState]:
    """Follow the cells' jobs until none is pending or running, logging each change of state."""
    seen: dict[str, tuple[str, str | None]] = {}
    misses = 0
    while True:
        try:
            states = grid_states(grid, log)
        except slurm.SlurmError as error:  # a controller restarting: ask again, give up after a few tries
            misses += 1
            if misses > MAX_MISSED_POLLS:
                raise
            log(f"Slurm did not answer ({error}); asking again")
            time.sleep(grid.spec.launcher.poll_seconds)
            continue
        misses = 0
        for s in states:
            if seen.get(s.cell) != (s.state, s.job_id):
                seen[s.cell] = (s.state, s.job_id)
                log(
                    f"[{s.cell}] {s.state}"
                    + (f" (job {s.job_id})" if s.job_id else "")
                    + (f": {s.detail}" if s.detail else "")
                )
        if not any(s.state in ("pending", "running", "requeued") for s in states):
            return states
        time.sleep(grid.spec.launcher.poll_seconds)


# ------------------------------------------------------------------------------------------- inside the job


def current_job_id(env=os.environ) -> str:
    """This job's id as the grid records it: ``ARRAY_TASK`` for an array task, else the job id."""
    if "SLURM_ARRAY_JOB_ID" in env and "SLURM_ARRAY_TASK_ID" in env:
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env["SLURM_JOB_ID"]


def run_cell_job(grid: Grid, cell_id: str, log: Log = print) -> int:
    """The cell's job: run its stages; on a preemption notice (USR1) the training saves a checkpoint at the next
    step boundary, and the job requeues itself, to resume from that checkpoint. Returns the exit status."""
    signal.signal(signal.SIGUSR1, request_stop)
    cells = [c for c in grid.cells if c.id == cell_id]
    if not cells:
        raise GridError(
            f"{grid.source}: no cell {cell_id!r}; `symnoise grid {grid.source} --check` lists the cells"
        )
    cell, job_id = cells[0], current_job_id()
    restart = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    record_event(
        cell.run_dir,
        "started",
        job_id=job_id,
        slurm_job_id=os.environ.get("SLURM_JOB_ID"),
        restart=restart,
        host=socket.gethostname(),
    )
    log(f"[{cell.id}] job {job_id} on {socket.gethostname()}" + (f", restart {restart}" if restart else ""))
    checkpoint = last_complete_checkpoint(cell.run_dir) if cell.run_dir.is_dir() else None
    if checkpoint is not None and "train" not in read_stages(cell.run_dir):
        log(f"[{cell.id}] training resumes from {checkpoint.name}")
    try:
        outcome = run_grid(grid, log=log, only=cell_id)
    except TrainingStopped as stopped:
        record_event(cell.run_dir, "preempted", job_id=job_id, message=str(stopped))
        log(f"[{cell.id}] {stopped}; requeueing job {job_id}")
        sys.stdout.flush()
        try:
            slurm.requeue(os.environ["SLURM_JOB_ID"])
        except slurm.SlurmError as error:
            write_failure(cell.run_dir, "train", f"preempted, and the requeue failed: {error}", "")
            return 1
        return 0
    return 1 if outcome.failed else 0
