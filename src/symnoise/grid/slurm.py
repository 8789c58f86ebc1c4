"""Slurm for `symnoise grid`: the launcher's Slurm fields, the sbatch options and batch script they make, and the
few Slurm commands the grid runs (``sbatch``, ``squeue``, ``scontrol``, ``sacct``).

The commands are called directly rather than through a submission library: the grid submits shell commands (one
``symnoise grid GRID --cell ID`` per array task), not pickled Python functions, and needs exactly the options a
cluster user would write by hand (``--requeue``, ``--signal=B:USR1@N``, ``--array``, ``--open-mode=append``);
``sbatch --test-only`` checks a job against the real cluster before anything is submitted. ``sacct`` is used when
the cluster keeps accounting; without it (no slurmdbd) a job's end is read from ``scontrol show job`` while the
controller still remembers it, and otherwise from the grid's own records in each cell directory.
"""

from __future__ import annotations

import functools
import getpass
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, Field, field_validator

# sbatch options the grid sets itself: given in `extra`, they would break the bookkeeping.
OWN_OPTIONS = (
    "--array",
    "-a",
    "--output",
    "-o",
    "--error",
    "-e",
    "--job-name",
    "-J",
    "--signal",
    "--requeue",
    "--no-requeue",
    "--parsable",
    "--wrap",
    "--open-mode",
    "--chdir",
    "-D",
    "--test-only",
)
_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")
_MEMORY = re.compile(r"^\d+[KMGT]?$", re.IGNORECASE)
PREEMPTION_SIGNAL = "USR1"


class SlurmError(RuntimeError):
    """A Slurm command failed or is missing; the message names the command and what it said."""


def time_limit_seconds(text: str) -> int:
    """Slurm's time formats (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``) in seconds."""
    match = _TIME.match(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a Slurm time (MM, HH:MM:SS, D-HH:MM, ...)")
    days, a, b, c = match.groups()
    numbers = [int(a)] + [int(x) for x in (b, c) if x is not None]
    if days is not None:  # D-HH[:MM[:SS]]
        hours, minutes, seconds = (numbers + [0, 0])[:3]
        return ((int(days) * 24 + hours) * 60 + minutes) * 60 + seconds
    if len(numbers) == 1:  # MM
        return numbers[0] * 60
    if len(numbers) == 2:  # MM:SS
        return numbers[0] * 60 + numbers[1]
    return (numbers[0] * 60 + numbers[1]) * 60 + numbers[2]


class SlurmFields(BaseModel):
    """The launcher's fields for ``kind: slurm`` (each maps to one sbatch option; None: the cluster's default)."""

    partition: str | None = Field(None, description="sbatch --partition")
    account: str | None = Field(None, description="sbatch --account")
    qos: str | None = Field(None, description="sbatch --qos")
    time: str | None = Field(None, description="sbatch --time, e.g. 2-00:00:00 (the job's time limit)")
    nodes: int = Field(1, ge=1, description="nodes per cell; >1 trains over all of them")
    gpus_per_node: int | None = Field(None, ge=0, description="sbatch --gpus-per-node")
    processes_per_node: int | None = Field(
        None, ge=1, description="training processes per node (default: gpus_per_node, else 1)"
    )
    cpus_per_task: int | None = Field(None, ge=1, description="sbatch --cpus-per-task (one task per node)")
    mem: str | None = Field(None, description="sbatch --mem per node, e.g. 64G")
    constraint: str | None = Field(None, description="sbatch --constraint, e.g. a100")
    extra: list[str] = Field(default_factory=list, description="further sbatch options, e.g. [--exclusive]")
    setup: list[str] = Field(
        default_factory=list, description="shell lines run before symnoise in each job (module load ...)"
    )
    signal_seconds: int = Field(
        300,
        ge=1,
        description="ask Slurm for USR1 this many seconds before the time limit (preemption notice)",
    )
    max_parallel: int | None = Field(None, ge=1, description="cells running at once (the array's %N)")
    poll_seconds: float = Field(30.0, gt=0, description="how often --wait asks Slurm about the jobs")

    @field_validator("time")
    @classmethod
    def _time(cls, value: str | None) -> str | None:
        if value is not None:
            time_limit_seconds(value)
        return value

    @field_validator("mem")
    @classmethod
    def _mem(cls, value: str | None) -> str | None:
        if value is not None and not _MEMORY.match(value):
            raise ValueError(f"{value!r} is not a Slurm memory size (e.g. 64G, 500M)")
        return value

    @field_validator("extra")
    @classmethod
    def _extra(cls, values: list[str]) -> list[str]:
        for value in values:
            name = value.split("=", 1)[0]
            if not value.startswith("-"):
                raise ValueError(f"{value!r}: each entry is one sbatch option, starting with - or --")
            if name in OWN_OPTIONS:
                raise ValueError(f"{name} is set by symnoise grid itself; leave it out of extra")
        return values

    @property
    def training_processes_per_node(self) -> int:
        return self.processes_per_node or self.gpus_per_node or 1

    def slurm_problems(self) -> list[str]:
        """Settings that cannot work together (checked when the kind is slurm)."""
        problems = []
        if self.time and time_limit_seconds(self.time) <= self.signal_seconds:
            problems.append(
                f"signal_seconds ({self.signal_seconds}) must be shorter than the time limit ({self.time})"
            )
        if self.gpus_per_node and self.processes_per_node and self.processes_per_node > self.gpus_per_node:
            problems.append(
                f"processes_per_node ({self.processes_per_node}) is more than gpus_per_node "
                f"({self.gpus_per_node}): one process per GPU"
            )
        return problems


# ---------------------------------------------------------------------------------------------- submission


def sbatch_options(fields: SlurmFields, job_name: str, log_pattern: str, workdir: Path) -> list[str]:
    """The sbatch options of a grid's jobs: the launcher's resources, requeue on preemption with a USR1 notice,
    one log per array task appended across restarts."""
    options = [
        f"--job-name={job_name}",
        f"--output={log_pattern}",
        "--open-mode=append",
        f"--chdir={workdir}",
        "--requeue",
        f"--signal=B:{PREEMPTION_SIGNAL}@{fields.signal_seconds}",
        f"--nodes={fields.nodes}",
        "--ntasks-per-node=1",
    ]
    named = {
        "partition": fields.partition,
        "account": fields.account,
        "qos": fields.qos,
        "time": fields.time,
        "gpus-per-node": fields.gpus_per_node or None,
        "cpus-per-task": fields.cpus_per_task,
        "mem": fields.mem,
        "constraint": fields.constraint,
    }
    options += [f"--{name}={value}" for name, value in named.items() if value is not None]
    return options + list(fields.extra)


def array_option(count: int, max_parallel: int | None) -> str:
    return f"--array=0-{count - 1}" + (f"%{max_parallel}" if max_parallel else "")


def batch_script(command: Sequence[str], cell_ids: Sequence[str], setup: Sequence[str], title: str) -> str:
    """The job script: array task I runs ``command --cell CELL_IDS[I]``. USR1 is ignored until symnoise installs its
    own handler (a notice in the first instant must not kill the job), and ``exec`` makes symnoise the batch shell,
    the process Slurm sends the notice to."""
    cells = " ".join(shlex.quote(c) for c in cell_ids)
    lines = [
        "#!/bin/bash",
        f"# {title}",
        "trap '' USR1",
        "export PYTHONUNBUFFERED=1",
        *setup,
        f"CELLS=({cells})",
        'CELL="${CELLS[${SLURM_ARRAY_TASK_ID:-0}]}"',
        f'exec {shlex.join(command)} --cell "$CELL"',
        "",
    ]
    return "\n".join(lines)


def require_commands(*names: str) -> None:
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        raise SlurmError(
            f"Slurm is not installed here: {', '.join(missing)} not found on PATH (launcher kind slurm "
            "submits from a machine with the Slurm client commands, e.g. a cluster's login node)"
        )


def _run(command: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise SlurmError(f"{command[0]} not found on PATH") from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"`{shlex.join(command)}` did not answer in {timeout:.0f} s") from None


def _said(result: subprocess.CompletedProcess) -> str:
    return (result.stderr.strip() or result.stdout.strip() or f"exit status {result.returncode}").replace(
        "\n", "; "
    )


def check_submission(options: list[str], script: Path) -> None:
    """``sbatch --test-only``: the controller checks partition, account, QOS, limits and resources without
    submitting; a refusal raises `SlurmError` with sbatch's own message."""
    result = _run(["sbatch", "--test-only", *options, str(script)])
    if result.returncode != 0:
        raise SlurmError(f"sbatch refused the job (nothing was submitted): {_said(result)}")


def submit(options: list[str], script: Path) -> str:
    """Submit the script; returns the job id (an array's id)."""
    result = _run(["sbatch", "--parsable", *options, str(script)])
    if result.returncode != 0:
        raise SlurmError(f"sbatch refused the job: {_said(result)}")
    return result.stdout.strip().split(";")[0]


def requeue(job_id: str) -> None:
    result = _run(["scontrol", "requeue", job_id])
    if result.returncode != 0:
        raise SlurmError(f"scontrol requeue {job_id} failed: {_said(result)}")


# ------------------------------------------------------------------------------------------------- state


@dataclass(frozen=True)
class JobState:
    """What Slurm says of one job (an array task's id is ``ARRAY_TASK``): its state, reason and node list."""

    job_id: str
    state: str  # PENDING, RUNNING, COMPLETING, COMPLETED, FAILED, TIMEOUT, CANCELLED, ...
    reason: str = ""
    nodes: str = ""
    exit_code: str = ""
    name: str = ""

    @property
    def live(self) -> bool:
        """Whether the job may still run (or is running): a cell with a live job is never submitted again."""
        return self.state in LIVE_STATES


LIVE_STATES = frozenset(
    {
        "PENDING",
        "RUNNING",
        "CONFIGURING",
        "COMPLETING",
        "REQUEUED",
        "REQUEUE_FED",
        "REQUEUE_HOLD",
        "RESIZING",
        "SUSPENDED",
        "STOPPED",
        "SIGNALING",
        "STAGE_OUT",
        "PREEMPTED",
    }
)


def live_jobs() -> dict[str, JobState]:
    """This user's jobs the controller holds now, array tasks one by one, by id (``12_3`` for a task)."""
    user = os.environ.get("USER") or getpass.getuser()
    result = _run(["squeue", "-h", "-r", "-u", user, "-o", "%i|%T|%r|%N|%j"])
    if result.returncode != 0:
        raise SlurmError(f"squeue failed: {_said(result)}")
    jobs = {}
    for line in result.stdout.splitlines():
        parts = line.strip().split("|", 4)
        if len(parts) == 5:
            reason = "" if parts[2] == "None" else parts[2]
            jobs[parts[0]] = JobState(parts[0], parts[1], reason, parts[3], name=parts[4])
    return jobs


@functools.cache
def accounting_available() -> bool:
    """Whether ``sacct`` answers here (it needs slurmdbd, which small clusters may not run); asked once."""
    if shutil.which("sacct") is None:
        return False
    result = _run(["sacct", "-n", "-X", "-j", "1", "-o", "JobID"], timeout=30)
    return result.returncode == 0


def ended_jobs_from_sacct(job_ids: Sequence[str]) -> dict[str, JobState]:
    result = _run(
        ["sacct", "-n", "-P", "-X", "-j", ",".join(job_ids), "-o", "JobID,State,Reason,NodeList,ExitCode"]
    )
    jobs = {}
    for line in result.stdout.splitlines() if result.returncode == 0 else []:
        parts = line.split("|")
        if len(parts) == 5:
            state = parts[1].split()[0]  # "CANCELLED by 0" -> CANCELLED
            jobs[parts[0]] = JobState(parts[0], state, parts[2], parts[3], parts[4])
    return jobs


def ended_job_from_scontrol(job_id: str) -> JobState | None:
    """The controller's record of a job shortly after it ended (None once it has forgotten it)."""
    result = _run(["scontrol", "-o", "show", "job", job_id], timeout=30)
    if result.returncode != 0 or "JobState=" not in result.stdout:
        return None
    fields = dict(
        item.split("=", 1) for item in result.stdout.split() if "=" in item and not item.startswith("=")
    )
    return JobState(
        job_id,
        fields.get("JobState", "UNKNOWN"),
        "" if fields.get("Reason") == "None" else fields.get("Reason", ""),
        fields.get("NodeList", ""),
        fields.get("ExitCode", ""),
    )


def ended_jobs(job_ids: Sequence[str]) -> dict[str, JobState]:
    """The final state of jobs no longer in the queue, from accounting when there is one, else the controller."""
    if not job_ids:
        return {}
    if accounting_available():
        return ended_jobs_from_sacct(job_ids)
    found = {}
    for job_id in job_ids:
        state = ended_job_from_scontrol(job_id)
        if state is not None:
            found[job_id] = state
    return found
