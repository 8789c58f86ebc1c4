"""`symnoise grid` on a real single-node Slurm (the `local_slurm` fixture): a grid through Slurm equals the same
grid run locally, bit for bit; a preempted (USR1) and a requeued job resume and end identical to an uninterrupted
run; a failed cell is reported and re-submitted alone once fixed; a killed submitter never submits a cell twice;
bad launcher settings are refused before anything is submitted; a two-process cell meets through Slurm's
variables."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from test_grid import tiny_grid, write_jsonl

from symnoise.grid import load_grid, run_grid, validate_grid
from symnoise.grid.jobs import read_jobs
from symnoise.grid.slurm import SlurmFields, sbatch_options, time_limit_seconds
from symnoise.grid.slurm_launch import first_host, node_launcher, rendezvous_from_slurm, srun_command

pytestmark = pytest.mark.slow
METHODS = ["none", "neftune", "gaussian", "symnoise"]
STEPS = 40
LOCAL = {"kind": "local"}
FAST_SLURM = {"kind": "slurm", "poll_seconds": 0.5, "time": "10", "signal_seconds": 30}


def slurm_grid(tmp_path: Path, base_model: Path, launcher: dict, methods=METHODS, **kwargs) -> dict:
    """The grid tests' tiny grid on the session's tiny Llama (no pretraining), STEPS steps with a checkpoint every
    5, one step logged at a time; evaluation: held-out reference loss and output statistics."""
    data = tiny_grid(tmp_path, methods=methods, **kwargs)
    del data["pretrain"]
    data["axes"]["model"] = [{"name": "tiny", "path": str(base_model)}]
    data["base"]["training"].update(max_steps=STEPS, save_steps=5, save_total_limit=2)
    data["output_dir"] = str(tmp_path / ("grid-" + launcher["kind"]))
    data["launcher"] = launcher
    return data


def save(tmp_path: Path, data: dict, name: str) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def symnoise_grid(env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "symnoise", "grid", *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def env(local_slurm):
    """One intra-op thread everywhere (bitwise equality across processes) and unbuffered logs."""
    return {**local_slurm, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def reference(base_model, tmp_path_factory):
    """The 4-cell grid run locally, in this process with one thread: what every Slurm run must equal."""
    folder = tmp_path_factory.mktemp("local")
    grid = validate_grid(slurm_grid(folder, base_model, LOCAL))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        outcome = run_grid(grid, log=lambda line: None)
    finally:
        torch.set_num_threads(threads)
    assert [c.status for c in outcome.cells] == ["finished"] * len(METHODS)
    return {cell.id: cell.run_dir for cell in grid.cells}


def step_records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if '"loss"' in line]


def assert_same_cell(got: Path, want: Path) -> None:
    """Final weights bitwise, every step's loss, gradient norm, noise norm and learning rate, each step logged
    once, and the evaluation stages' numbers."""
    assert (got / "model.safetensors").read_bytes() == (want / "model.safetensors").read_bytes(), got.name
    mine, theirs = step_records(got), step_records(want)
    assert [r["step"] for r in mine] == list(range(1, STEPS + 1)), got.name
    for key in ("loss", "grad_norm", "noise_norm", "learning_rate"):
        assert [r.get(key) for r in mine] == [r.get(key) for r in theirs], (got.name, key)
    stages = [json.loads((d / "stages.json").read_text()) for d in (got, want)]
    assert stages[0]["train"]["final_loss"] == stages[1]["train"]["final_loss"]
    assert stages[0]["reference_loss"]["loss"] == stages[1]["reference_loss"]["loss"]
    assert (got / "model_outputs.json").read_text() == (want / "model_outputs.json").read_text()


def wait_until(condition, timeout: float, what: str, poll: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {what}")


def logged_steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    steps = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            steps.append(json.loads(line)["step"])
        except (ValueError, KeyError):
            pass
    return steps


def slurm(env: dict, *args: str) -> str:
    result = subprocess.run(list(args), env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{' '.join(args)}: {result.stderr}"
    return result.stdout


def grid_command(capsys, *args) -> tuple[int, str]:
    """`symnoise grid ARGS` in this process (the quick reads: --status, a re-run with nothing to do): status, output."""
    from symnoise.cli.main import main

    status = main(["grid", *map(str, args)])
    return status, capsys.readouterr().out


def start_requeued_now(env: dict, job_id: str) -> None:
    """Start a requeued job now rather than after Slurm's requeue delay, once its earlier run has left the node.

    The delay exists for a reason the test must respect: slurmd refuses to launch a job whose credential is not
    newer, to the second, than the revocation of the run it replaces ("Job credential revoked"), and that run's
    srun step can outlive the requeue by seconds. So: wait until no slurmstepd of the job is left, then let the
    clock pass a second boundary."""
    raw_id = slurm(env, "squeue", "-h", "-j", job_id, "-o", "%A").strip()
    assert raw_id.isdigit(), f"squeue gave no job id for {job_id}: {raw_id!r}"
    wait_until(
        lambda: not job_steps_running(raw_id), 60, f"the earlier run of job {job_id} to leave the node"
    )
    time.sleep(1.1)
    slurm(env, "scontrol", "update", f"JobId={job_id}", "StartTime=now")


def job_steps_running(raw_id: str) -> bool:
    """Whether a slurmstepd of the job is still running on this (the only) node: its title is ``slurmstepd: [ID.STEP]``."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            title = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if title.startswith(f"slurmstepd: [{raw_id}."):
            return True
    return False


def squeue_state(env: dict, job_id: str) -> str:
    """The state squeue shows for one array task (ARRAY_TASK), or "" when it is not queued."""
    lines = slurm(env, "squeue", "-h", "-r", "-o", "%i %T").splitlines()
    return dict(line.split() for line in lines if line.strip()).get(job_id, "")


# ------------------------------------------------------------------------------------------------ pure parts


def test_launcher_fields_make_the_sbatch_options_and_rendezvous(tmp_path):
    fields = SlurmFields(
        partition="gpu",
        account="lab",
        qos="normal",
        time="1-12:00:00",
        nodes=2,
        gpus_per_node=4,
        cpus_per_task=32,
        mem="400G",
        constraint="a100",
        extra=["--exclusive"],
        signal_seconds=600,
    )
    options = sbatch_options(fields, "symnoise-x", "/o/%A_%a.out", tmp_path)
    for option in (
        "--requeue",
        "--signal=B:USR1@600",
        "--open-mode=append",
        "--nodes=2",
        "--ntasks-per-node=1",
        "--partition=gpu",
        "--account=lab",
        "--qos=normal",
        "--time=1-12:00:00",
        "--gpus-per-node=4",
        "--cpus-per-task=32",
        "--mem=400G",
        "--constraint=a100",
        "--exclusive",
    ):
        assert option in options
    assert time_limit_seconds("1-12:00:00") == 36 * 3600 and time_limit_seconds("90") == 5400
    env = {"SLURM_JOB_ID": "1234", "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_JOB_NUM_NODES": "2"}
    rendezvous = rendezvous_from_slurm(fields, env)
    assert (rendezvous.master_addr, rendezvous.nodes, rendezvous.world_size) == ("gpu07", 2, 8)
    for nodelist, first in [("a1,b2", "a1"), ("rack[2-3]-n[01-04]", "rack2-n01"), ("n[012,100-101]", "n012")]:
        assert first_host(nodelist) == first
    assert rendezvous.master_port == 20000 + 1234
    command = srun_command(rendezvous, node_launcher(rendezvous, None, "accelerate", ["train", "c.yaml"]))
    assert command[:4] == ["srun", "--nodes=2", "--ntasks-per-node=1", "--ntasks=2"]
    assert '--node-rank "$SLURM_NODEID"' in command[-1] and command[-1].startswith("trap '' USR1; exec ")
    fsdp = node_launcher(rendezvous, "fsdp.yaml", "accelerate", ["train", "c.yaml"])
    assert fsdp[fsdp.index("--num_processes") + 1] == "8" and fsdp[fsdp.index("--num_machines") + 1] == "2"
    with pytest.raises(Exception, match="the job has 1 node"):
        rendezvous_from_slurm(fields, {**env, "SLURM_JOB_NUM_NODES": "1"})


@pytest.mark.parametrize(
    "launcher,message",
    [
        ({"kind": "slurm", "nodes": 0}, "launcher.nodes: Input should be greater than or equal to 1"),
        ({"kind": "slurm", "time": "soon"}, "'soon' is not a Slurm time"),
        ({"kind": "slurm", "mem": "lots"}, "'lots' is not a Slurm memory size"),
        ({"kind": "slurm", "extra": ["--array=0-3"]}, "--array is set by symnoise grid itself"),
        ({"kind": "slurm", "time": "5", "signal_seconds": 600}, "signal_seconds (600) must be shorter"),
        ({"kind": "local", "partition": "gpu"}, "partition: Slurm settings apply only to kind slurm"),
        ({"kind": "slurm", "num_processes": 2}, "set nodes and processes_per_node, not num_processes"),
    ],
)
def test_bad_launcher_fields_are_named(tmp_path, base_model, launcher, message):
    from symnoise.grid import GridError

    with pytest.raises(GridError) as error:
        load_grid(save(tmp_path, slurm_grid(tmp_path, base_model, launcher), "grid.yaml"))
    assert message in str(error.value)


# ------------------------------------------------------------------------------------------- on real Slurm


def test_bad_launcher_configs_fail_before_anything_is_submitted(
    tmp_path, base_model, env, monkeypatch, capsys
):
    """One clear error, exit status 2, no output folder and no job: an unknown partition, more memory than any node
    has (sbatch refuses), nodes: 0, and no Slurm commands on PATH."""
    from symnoise.cli.main import main

    cases = {
        "partition": ({**FAST_SLURM, "partition": "nowhere"}, None, "invalid partition"),
        "refused": ({**FAST_SLURM, "mem": "900000G"}, None, "sbatch refused the job"),
        "nodes": ({**FAST_SLURM, "nodes": 0}, None, "launcher.nodes"),
        "missing": (FAST_SLURM, str(Path(sys.executable).parent), "Slurm is not installed"),
    }
    for name, (launcher, path_variable, message) in cases.items():
        (tmp_path / name).mkdir()
        data = slurm_grid(tmp_path / name, base_model, launcher)
        with monkeypatch.context() as patch:
            if path_variable:
                patch.setenv("PATH", path_variable)
            status = main(["grid", str(save(tmp_path / name, data, "grid.yaml"))])
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if "error" in line]
        assert status == 2 and message in err and len(errors) == 1, (name, err)
        assert not Path(data["output_dir"]).exists(), name
    assert slurm(env, "squeue", "-h", "-o", "%i") == ""


def test_grid_through_slurm_equals_the_local_run(tmp_path, base_model, env, reference, capsys):
    path = save(tmp_path, slurm_grid(tmp_path, base_model, FAST_SLURM), "grid.yaml")
    started = time.monotonic()
    result = symnoise_grid(env, path, "--wait")
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    grid = load_grid(path)
    for cell in grid.cells:
        assert_same_cell(cell.run_dir, reference[cell.id])
        assert len(read_jobs(cell.run_dir).submitted) == 1
    summary = json.loads((grid.output_dir / "summary.json").read_text())
    assert [c["status"] for c in summary["cells"]] == ["finished"] * len(METHODS)
    assert (grid.output_dir / "report" / "report.json").is_file()
    code, out = grid_command(capsys, path, "--status")
    assert code == 0 and f"{len(METHODS)} cells: {len(METHODS)} finished" in out, out
    code, out = grid_command(capsys, path)  # nothing left to do: nothing submitted, the summary again
    assert code == 0 and "submitted" not in out and f"{len(METHODS)}/{len(METHODS)} cells finished" in out
    assert all(len(read_jobs(c.run_dir).submitted) == 1 for c in grid.cells)
    print(f"\n4-cell grid through Slurm: {seconds:.0f} s")


def test_preempted_and_requeued_jobs_resume_identically(tmp_path, base_model, env, reference, capsys):
    """The submitter (`--wait`) is killed once the jobs are queued; the first job gets USR1 (the preemption
    notice) mid-training and requeues itself after a checkpoint; the second (one cell runs at a time) is requeued
    from outside mid-training (killed without notice); a second `--wait` submits nothing, follows both to the end
    and writes the summary; both cells equal the uninterrupted run."""
    data = slurm_grid(tmp_path, base_model, {**FAST_SLURM, "max_parallel": 1}, methods=["none", "symnoise"])
    path = save(tmp_path, data, "grid.yaml")
    grid = load_grid(path)
    notified, killed = (cell.run_dir for cell in grid.cells)
    submitter = subprocess.Popen(
        [sys.executable, "-m", "symnoise", "grid", str(path), "--wait"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    job = {d: wait_until(lambda d=d: read_jobs(d).job_id, 120, "the submission") for d in (notified, killed)}
    os.killpg(submitter.pid, signal.SIGKILL)
    submitter.wait()

    wait_until(lambda: logged_steps(notified)[-1:] >= [3], 180, "the first job's training")
    slurm(env, "scancel", "--signal=USR1", "--batch", job[notified])
    wait_until(lambda: read_jobs(notified).preemptions == 1, 60, "the preempted job's requeue")
    stopped_at = max(logged_steps(notified))
    assert stopped_at < STEPS and (notified / f"checkpoint-{stopped_at}").is_dir()

    wait_until(lambda: logged_steps(killed)[-1:] >= [7], 180, "the second job's training past checkpoint-5")
    slurm(env, "scontrol", "requeue", job[killed])
    wait_until(lambda: squeue_state(env, job[killed]) == "PENDING", 60, "the killed job pending")
    assert max(logged_steps(killed)) < STEPS and not (killed / "model.safetensors").exists()
    code, out = grid_command(capsys, path, "--status")
    lines = {d: next(line for line in out.splitlines() if d.name in line) for d in (notified, killed)}
    assert code == 0 and "requeued" in lines[notified] and "preempted 1x" in lines[notified], out
    assert "requeued" in lines[killed], out
    for run_dir in (notified, killed):
        start_requeued_now(env, job[run_dir])

    result = symnoise_grid(env, path, "--wait")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for cell in grid.cells:
        assert_same_cell(cell.run_dir, reference[cell.id])
        jobs = read_jobs(cell.run_dir)
        assert jobs.submitted == [job[cell.run_dir]] and jobs.starts == 2, cell.id
        log = Path(jobs.log).read_text()
        assert re.search(r"training resumes from checkpoint-([1-9]\d*)", log), log[-2000:]
    assert "submitted" not in result.stdout and (grid.output_dir / "summary.md").is_file()


def test_a_failed_cell_is_reported_and_resubmitted_alone_once_fixed(tmp_path, base_model, env, capsys):
    good = write_jsonl(
        tmp_path / "good.jsonl", [{"instruction": f"Say {i}.", "output": str(i)} for i in range(16)]
    )
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"instruction": "ok", "output": "fine"}\n{"instruction": 5, "output": "bad"}\n')
    data = slurm_grid(tmp_path, base_model, FAST_SLURM, methods=["none"], train_file=good)
    data["axes"]["dataset"] = [
        {"name": "broken", "path": str(broken), "format": "alpaca"},
        {"name": "good", "path": str(good), "format": "alpaca"},
    ]
    data["base"]["training"]["max_steps"] = 2
    data["evaluation"] = {}
    path = save(tmp_path, data, "grid.yaml")
    result = symnoise_grid(env, path, "--wait")
    assert result.returncode == 1
    status = grid_command(capsys, path, "--status")[1]
    bad_line = next(line for line in status.splitlines() if "tiny-broken" in line)
    assert "failed" in bad_line and "DataError" in bad_line and "row 1" in bad_line, status
    assert "finished" in next(line for line in status.splitlines() if "tiny-good" in line)
    assert "tiny-broken-none-a0-s0: train: DataError" in (tmp_path / "grid-slurm" / "summary.md").read_text()

    broken.write_text('{"instruction": "ok", "output": "fine"}\n{"instruction": "five", "output": "good"}\n')
    result = symnoise_grid(env, path, "--wait")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    grid = load_grid(path)
    assert [len(read_jobs(c.run_dir).submitted) for c in grid.cells] == [2, 1]
    summary = json.loads((grid.output_dir / "summary.json").read_text())
    assert [c["status"] for c in summary["cells"]] == ["finished", "finished"]


def test_a_two_process_cell_meets_through_slurm_variables_and_survives_preemption(tmp_path, base_model, env):
    """processes_per_node: 2 on one node: srun starts torchrun, which starts two processes meeting at the first
    host of SLURM_JOB_NODELIST on a port from SLURM_JOB_ID; they train over gloo as one run of world size 2. The
    preemption notice sent to the job reaches both processes through srun; they stop at the same step with one
    checkpoint, and the requeued job resumes from it: every step is logged exactly once."""
    steps = 30
    data = slurm_grid(tmp_path, base_model, {**FAST_SLURM, "processes_per_node": 2}, methods=["neftune"])
    data["base"]["training"].update(max_steps=steps, per_device_batch_size=4)
    data["evaluation"] = {}
    path = save(tmp_path, data, "grid.yaml")
    submitted = symnoise_grid(env, path)
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    run_dir = load_grid(path).cells[0].run_dir
    job = read_jobs(run_dir).job_id
    wait_until(lambda: logged_steps(run_dir)[-1:] >= [3], 240, "the two processes' training")
    slurm(env, "scancel", "--signal=USR1", "--batch", job)
    wait_until(lambda: read_jobs(run_dir).preemptions == 1, 120, "the preempted job's requeue")
    stopped_at = max(logged_steps(run_dir))
    assert stopped_at < steps and (run_dir / f"checkpoint-{stopped_at}").is_dir()
    wait_until(lambda: squeue_state(env, job) == "PENDING", 60, "the requeued job pending")
    start_requeued_now(env, job)

    result = symnoise_grid(env, path, "--wait")
    log = Path(read_jobs(run_dir).log).read_text()
    assert result.returncode == 0, log[-4000:] + result.stderr[-2000:]
    assert "world size 2 (process 0" in log and "world size 2 (process 1" in log and "backend gloo" in log
    assert f"training resumes from checkpoint-{stopped_at}" in log
    assert [r["step"] for r in step_records(run_dir)] == list(range(1, steps + 1))
    assert (run_dir / "model.safetensors").is_file() and read_jobs(run_dir).starts == 2
