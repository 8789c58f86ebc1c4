"""Training a cell across a Slurm allocation: the rendezvous read from Slurm's variables and the launch command.

Inside the cell's job (on its first node), a cell with more than one training process is trained by one
``srun`` task per node, each starting that node's processes: ``torchrun`` (``python -m torch.distributed.run``)
by default, or ``accelerate launch --config_file F`` when the launcher names an accelerate config (the shipped
FSDP / DeepSpeed configs work unchanged: the machine count, process count, machine rank and main address are
given on the command line, which wins over the file). Every node meets at the first host of the allocation, on a
port derived from the job id; each process then checks the world size as any `symnoise train` does.

The node task ignores USR1 (``trap '' USR1`` before ``exec``), so a preemption notice forwarded by ``srun`` to the
whole step reaches the training processes, which save a checkpoint and stop at the next step boundary, and not
the launcher, which USR1 would kill.
"""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..train.trainer import request_stop
from .slurm import SlurmError, SlurmFields

NODE_RANK = '"$SLURM_NODEID"'  # expanded by each node's shell, not by the job's
PORT_BASE, PORT_SPAN = 20000, 20000


@dataclass(frozen=True)
class Rendezvous:
    """Where and how many: the first host of the allocation and a port, the node count, processes per node."""

    master_addr: str
    master_port: int
    nodes: int
    processes_per_node: int

    @property
    def world_size(self) -> int:
        return self.nodes * self.processes_per_node


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list in its compact form: ``gpu[07-09,12]`` -> ``gpu07``,
    ``a1,b2`` -> ``a1``, ``rack[2-3]-n[01-04]`` -> ``rack2-n01`` (numbers keep their zero padding)."""
    host, rest = "", nodelist.strip()
    while rest and rest[0] != ",":
        if rest[0] == "[":
            inside, _, rest = rest[1:].partition("]")
            host += inside.split(",")[0].split("-")[0]
        else:
            host, rest = host + rest[0], rest[1:]
    if not host:
        raise SlurmError(f"SLURM_JOB_NODELIST={nodelist!r} names no host")
    return host


def rendezvous_from_slurm(fields: SlurmFields, env: Mapping[str, str]) -> Rendezvous:
    """The rendezvous of this job, from ``SLURM_JOB_NODELIST``, ``SLURM_JOB_NUM_NODES`` and ``SLURM_JOB_ID``; the
    allocation must have the nodes the launcher asked for (else the world size would silently differ)."""
    missing = [k for k in ("SLURM_JOB_ID", "SLURM_JOB_NODELIST", "SLURM_JOB_NUM_NODES") if k not in env]
    if missing:
        raise SlurmError(f"not inside a Slurm job: {', '.join(missing)} not set")
    nodes = int(env["SLURM_JOB_NUM_NODES"])
    if nodes != fields.nodes:
        raise SlurmError(
            f"the job has {nodes} node(s) but the launcher asks for nodes: {fields.nodes}; the world size "
            "would differ from the grid's"
        )
    port = PORT_BASE + int(env["SLURM_JOB_ID"]) % PORT_SPAN
    return Rendezvous(first_host(env["SLURM_JOB_NODELIST"]), port, nodes, fields.training_processes_per_node)


def node_launcher(
    rendezvous: Rendezvous, accelerate_config: str | None, accelerate: str, train_args: list[str]
) -> list[str]:
    """One node's launcher command (its machine rank left to the node's shell): torchrun, or accelerate launch."""
    r = rendezvous
    if accelerate_config:
        return [
            accelerate,
            "launch",
            "--config_file",
            accelerate_config,
            "--num_machines",
            str(r.nodes),
            "--num_processes",
            str(r.world_size),
            "--machine_rank",
            NODE_RANK,
            "--main_process_ip",
            r.master_addr,
            "--main_process_port",
            str(r.master_port),
            "-m",
            "symnoise",
            *train_args,
        ]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        str(r.nodes),
        "--nproc-per-node",
        str(r.processes_per_node),
        "--node-rank",
        NODE_RANK,
        "--master-addr",
        r.master_addr,
        "--master-port",
        str(r.master_port),
        "-m",
        "symnoise",
        *train_args,
    ]


def srun_command(rendezvous: Rendezvous, node_command: list[str]) -> list[str]:
    """``srun`` with one task per node, each running the node's launcher under ``trap '' USR1``."""
    text = " ".join(part if part == NODE_RANK else shlex.quote(part) for part in node_command)
    return [
        "srun",
        f"--nodes={rendezvous.nodes}",
        "--ntasks-per-node=1",
        f"--ntasks={rendezvous.nodes}",
        "--kill-on-bad-exit=1",
        "bash",
        "-c",
        f"trap '' USR1; exec {text}",
    ]


def train_args(cell_config: Path, resume: bool, overwrite: bool) -> list[str]:
    return (
        ["train", str(cell_config)]
        + (["--resume"] if resume else [])
        + (["--overwrite"] if overwrite else [])
    )


def cell_training_command(
    fields: SlurmFields,
    accelerate_config: str | None,
    accelerate: str,
    cell_config: Path,
    resume: bool,
    overwrite: bool,
    env: Mapping[str, str],
) -> list[str]:
    """The command that trains a cell over this job's allocation."""
    rendezvous = rendezvous_from_slurm(fields, env)
    launcher = node_launcher(
        rendezvous, accelerate_config, accelerate, train_args(cell_config, resume, overwrite)
    )
    return srun_command(rendezvous, launcher)


def trains_in_process(fields: SlurmFields, accelerate_config: str | None) -> bool:
    """One process on one node without an accelerate config: the cell's job trains it in its own process."""
    return fields.nodes == 1 and fields.training_processes_per_node == 1 and not accelerate_config


def run_passing_notice(command: list[str]) -> int:
    """Run ``command`` (``srun ...``); a USR1 to this process marks the stop as requested here and is passed on to
    ``srun``, which signals every process of the step. Returns the exit status."""
    process = subprocess.Popen(command)

    def pass_on(signum, frame) -> None:
        request_stop()
        if process.poll() is None:
            process.send_signal(signal.SIGUSR1)

    previous = signal.signal(signal.SIGUSR1, pass_on)
    try:
        return process.wait()
    finally:
        signal.signal(signal.SIGUSR1, previous)
