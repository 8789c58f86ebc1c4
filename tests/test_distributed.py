"""`symnoise train` in 2 processes on the CPU (gloo), through the real launchers: torchrun (DDP) and accelerate with
the shipped FSDP2 config. Each run writes one consolidated model that loads and generates, a run killed with
SIGKILL and resumed logs the uninterrupted run's losses and noise norms and ends with its weights, and a NaN
gradient on one rank makes both ranks skip the step. Plus the launch checks (accelerate --cpu, world size)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO_ROOT, free_port

from symnoise.train.config import ConfigError
from symnoise.train.distributed import LaunchError, check_launch, check_nonfinite_mode, check_world_size

pytestmark = pytest.mark.slow  # multi-process, subprocess or whole-pipeline tests: `make test` only

ENTRY = Path(__file__).with_name("distributed_entry.py")
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH")) if p),
}
ACCELERATE_CONFIGS = {"fsdp2": "fsdp.yaml", "zero2": "deepspeed-zero2.yaml", "zero3": "deepspeed-zero3.yaml"}


def has_deepspeed() -> bool:
    try:
        import deepspeed  # noqa: F401
    except Exception:  # not installed, or installed without what it needs here
        return False
    return True


KINDS = [
    "ddp",
    "fsdp2",
    *(
        pytest.param(kind, marks=pytest.mark.skipif(not has_deepspeed(), reason="deepspeed is not installed"))
        for kind in ("zero2", "zero3")
    ),
]


def launcher(kind: str) -> list[str]:
    port = str(free_port())
    if kind == "ddp":
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}"]
    # DeepSpeed checks its bf16 setting against the Trainer's precision, which is fp32 on a CPU.
    precision = ["--mixed_precision", "no"] if kind.startswith("zero") else []
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(REPO_ROOT / "configs" / "accelerate" / ACCELERATE_CONFIGS[kind]),
        *precision,
        "--num_processes",
        "2",
        "--main_process_port",
        port,
    ]


def run(cmd: list[str], timeout: int = 240, **env: str) -> subprocess.CompletedProcess:
    """Run a launcher in its own process group; on a timeout kill the whole group (the ranks too)."""
    proc = subprocess.Popen(
        cmd,
        env={**ENV, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"{cmd[:4]} timed out after {timeout} s:\n{err[-3000:]}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def train(
    kind: str, config: Path, *faults: str, resume: bool = False, **env: str
) -> subprocess.CompletedProcess:
    return run(
        [*launcher(kind), str(ENTRY), *faults, "train", str(config), *(["--resume"] if resume else [])], **env
    )


def write_config(base_model, alpaca_file, out: Path, method: str, **training) -> Path:
    data = {
        "model": {"name": str(base_model)},
        "data": {"path": str(alpaca_file), "max_length": 128},
        "noise": {"method": method, "alpha": 5.0, "seed": 0},
        "training": {
            "output_dir": str(out),
            "max_steps": 4,
            "per_device_batch_size": 4,
            "effective_batch_size": 8,
            "learning_rate": 1e-3,
            "warmup_ratio": 0.0,
            "save_steps": 2,
            "save_total_limit": 3,
            "report_to": [],
            "device": "cpu",
            "seed": 0,
            **training,
        },
    }
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(data))
    return path


def step_logs(run_dir: Path) -> dict[int, dict]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {line["step"]: line for line in lines if "loss" in line}


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The run directory's final model, loaded as a user would; it must be one complete safetensors model."""
    from transformers import AutoModelForCausalLM

    assert (run_dir / "model.safetensors").is_file() or (run_dir / "model.safetensors.index.json").is_file()
    assert not list(run_dir.glob("pytorch_model_fsdp*")) and not list(run_dir.glob("*.bin"))
    model, info = AutoModelForCausalLM.from_pretrained(run_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    weights = model.state_dict()
    assert all(torch.isfinite(v).all() for v in weights.values())
    return weights


def check_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "world size 2 (process 0" in proc.stderr and "backend gloo" in proc.stderr, proc.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_kill_and_resume_matches_the_uninterrupted_run_and_nan_steps_are_skipped(
    kind, base_model, alpaca_file, tmp_path
):
    """NEFTune (uniform) noise, so the logged noise norm differs per draw and shows the stream continuing.
    (DeepSpeed steps the optimizer inside backward, so a step cannot be skipped there: no NaN is injected.)
    Under FSDP2 and ZeRO-3 a run killed after its last checkpoint is resumed into the same final model too."""
    deepspeed = kind.startswith("zero")
    nan = () if deepspeed else ("--nan-at-step", "2", "--nan-rank", "1")
    mode = "stop" if deepspeed else "skip"
    reference = tmp_path / "reference"
    first = train(kind, write_config(base_model, alpaca_file, reference, "uniform", on_nonfinite=mode), *nan)
    check_ok(first)
    if kind == "fsdp2":  # the shipped fsdp_cpu_ram_efficient_loading, seen by from_pretrained on every rank
        assert all(f"process {r}: loading for FSDP cpu_ram_efficient_loading" in first.stderr for r in (0, 1))
    if kind == "zero3":  # the shipped zero3_init_flag: no rank holds the whole model while loading
        assert all(f"process {r}: model partitioned while loading" in first.stderr for r in (0, 1))
    if kind == "fsdp2":  # really sharded: the checkpoints hold FSDP's sharded state dict
        assert (reference / "checkpoint-2" / "pytorch_model_fsdp_0").is_dir()
    if kind.startswith("zero"):  # really DeepSpeed: the checkpoints hold its engine state
        assert (reference / "checkpoint-2" / "global_step2").is_dir()
    if not deepspeed:
        skipped = [
            json.loads(line) for line in (reference / "nonfinite_steps.jsonl").read_text().splitlines()
        ]
        assert [(r["step"], r["action"]) for r in skipped] == [(2, "skip")]  # one record, both ranks skipped
    expected = step_logs(reference)
    assert sorted(expected) == [1, 2, 3, 4]
    if (
        not deepspeed
    ):  # the logged norm of the skipped step: rank 0's own under DDP, the sharded whole under FSDP2
        assert math.isnan(expected[2]["grad_norm"]) == (kind == "fsdp2")
        assert all(math.isfinite(expected[s]["grad_norm"]) for s in (1, 3, 4))
    assert len({round(expected[s]["noise_norm"], 6) for s in expected}) == 4  # NEFTune: a new norm per draw

    crashed = tmp_path / "crashed"
    config = write_config(base_model, alpaca_file, crashed, "uniform", on_nonfinite=mode)
    killed = train(kind, config, *nan, "--kill-at-step", "3")
    assert killed.returncode != 0
    assert (crashed / "checkpoint-2").is_dir() and not (crashed / "checkpoint-4").exists()
    assert not (crashed / "model.safetensors").exists()
    check_ok(train(kind, config, resume=True))
    resumed = step_logs(crashed)
    assert sorted(resumed) == [1, 2, 3, 4]
    for step in expected:
        for key in ("loss", "noise_norm", "grad_norm"):
            assert resumed[step][key] == pytest.approx(expected[step][key], rel=1e-6, nan_ok=True), (
                step,
                key,
            )
    for rank in (0, 1):
        name = f"symnoise_noise_rank{rank}.pt"
        a = torch.load(reference / "checkpoint-4" / name, weights_only=True)
        b = torch.load(crashed / "checkpoint-4" / name, weights_only=True)
        assert torch.equal(a["generator"], b["generator"]) and a["draws"] == b["draws"] > 0
    ours, theirs = final_weights(crashed), final_weights(reference)
    for key, value in theirs.items():
        torch.testing.assert_close(ours[key], value, rtol=0, atol=1e-6)

    if kind not in ("fsdp2", "zero3"):  # where writing the final model is a collective gathering
        return
    # Killed after the last checkpoint, before the final model: the resume trains nothing and writes it.
    late = tmp_path / "late"
    config = write_config(base_model, alpaca_file, late, "uniform", on_nonfinite=mode)
    assert train(kind, config, *nan, "--kill-at-step", "4").returncode != 0
    assert (late / "checkpoint-4").is_dir() and not (late / "model.safetensors").exists()
    finished = train(kind, config, resume=True)
    check_ok(finished)
    assert "holds every step of the run; writing the final model from it" in finished.stderr
    assert sorted(step_logs(late)) == [1, 2, 3, 4]
    ours = final_weights(late)
    for key, value in theirs.items():
        torch.testing.assert_close(ours[key], value, rtol=0, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ddp", "fsdp2"])
def test_stop_mode_stops_every_rank_at_a_nan_on_one(kind, base_model, alpaca_file, tmp_path):
    """on_nonfinite: stop with a NaN gradient on rank 1 only: both ranks stop before the optimizer step, with the
    message, one record, no checkpoint of that step and no final model (and no rank left waiting)."""
    out = tmp_path / "run"
    proc = train(
        kind,
        write_config(base_model, alpaca_file, out, "uniform", on_nonfinite="stop"),
        "--nan-at-step",
        "2",
        "--nan-rank",
        "1",
    )
    assert proc.returncode != 0
    assert proc.stderr.count("training stopped: non-finite loss or gradient at step 2") == 2, proc.stderr[
        -3000:
    ]
    assert "process group still alive" not in proc.stderr
    records = [json.loads(line) for line in (out / "nonfinite_steps.jsonl").read_text().splitlines()]
    assert [(r["step"], r["action"]) for r in records] == [(2, "stop")]
    assert sorted(step_logs(out)) == [1]
    assert not (out / "checkpoint-2").exists() and not (out / "model.safetensors").exists()


@pytest.mark.slow
def test_a_stop_asked_of_one_rank_stops_both_at_that_step_with_one_read_per_step(
    base_model, alpaca_file, tmp_path
):
    """A preemption notice reaching rank 1 alone during step 2: both ranks stop after step 2 with checkpoint-2,
    learning it from the non-finite check's all-reduce, and each rank's steps read the device once (eager
    attention: the model's mask preparation reads nothing; tests/test_host_syncs.py has the rest)."""
    out = tmp_path / "run"
    config = write_config(base_model, alpaca_file, out, "symnoise", max_steps=4, save_steps=100)
    data = yaml.safe_load(config.read_text())
    data["model"]["attn_implementation"] = "eager"
    config.write_text(yaml.safe_dump(data))
    counts = tmp_path / "syncs"
    counts.mkdir()
    proc = train("ddp", config, "--stop-at-step", "2", "--stop-rank", "1", "--count-syncs", str(counts))
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.count("training stopped: stopped at step 2 on a preemption notice (USR1)") == 2, (
        proc.stderr[-3000:]
    )
    assert "process group still alive" not in proc.stderr and "Trainer" not in proc.stdout
    assert sorted(step_logs(out)) == [1, 2]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    assert not (out / "model.safetensors").exists()
    for rank in (0, 1):
        read = json.loads((counts / f"rank{rank}.json").read_text())
        assert read["step"] == {"1": 1, "2": 1}, read
        assert read["step_reads"] == ["tolist train/reliability.py:on_pre_optimizer_step"], read


@pytest.mark.slow
def test_fsdp2_symnoise_run_writes_one_consolidated_model_that_generates(base_model, alpaca_file, tmp_path):
    """(SymNoise under DDP: tests/test_train.py::test_ddp_two_processes_on_cpu.)"""
    out = tmp_path / "symnoise"
    first = train(
        "fsdp2",
        write_config(base_model, alpaca_file, out, "symnoise", max_steps=3, save_steps=100),
        SYMNOISE_CACHE=str(tmp_path / "cache"),
    )
    check_ok(first)
    # An empty cache: the first process tokenises while the other waits, then opens what it wrote.
    assert "process 0: training data tokenised" in first.stderr
    assert "process 1: training data opened from the cache" in first.stderr
    logs = step_logs(out)
    # The shipped FSDP2 config's mixed_precision: bf16 makes FSDP compute in bf16 (here on the CPU too): the
    # noise is drawn in bf16, so its norm is alpha/sqrt(3) to bf16 precision.
    assert sorted(logs) == [1, 2, 3] and all(
        line["noise_norm"] == pytest.approx(5 / 3**0.5, rel=5e-3) for line in logs.values()
    )
    weights = final_weights(out)
    from safetensors.torch import load_file

    base = load_file(base_model / "model.safetensors")
    assert weights.keys() == base.keys() and all(weights[k].shape == base[k].shape for k in base)
    assert any(not torch.equal(weights[k], base[k]) for k in base)  # trained
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([{"instruction": "Add 2 and 3.", "dataset": "t"}]))
    generated = run(
        [
            sys.executable,
            "-m",
            "symnoise",
            "generate",
            str(out),
            "--prompts",
            str(prompts),
            "--output",
            str(tmp_path / "outputs.json"),
            "--max-new-tokens",
            "4",
            "--device",
            "cpu",
            "--no-progress",
        ],
        timeout=120,
    )
    assert generated.returncode == 0, generated.stderr[-2000:]
    records = json.loads((tmp_path / "outputs.json").read_text())
    assert len(records) == 1 and isinstance(records[0]["output"], str)


@pytest.mark.slow
def test_accelerate_cpu_launch_of_several_processes_fails_clearly(base_model, alpaca_file, tmp_path):
    config = write_config(base_model, alpaca_file, tmp_path / "run", "uniform")
    proc = run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--cpu",
            "--num_processes",
            "2",
            "--main_process_port",
            str(free_port()),
            "-m",
            "symnoise",
            "train",
            str(config),
        ],
        timeout=120,
    )
    assert proc.returncode != 0
    assert "starts a single process" in proc.stderr and "torchrun --nproc_per_node N" in proc.stderr
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_launch_checks():
    check_launch({})  # a plain single process
    check_launch({"ACCELERATE_USE_CPU": "True"})  # accelerate launch --cpu, one process
    check_launch(
        {"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}
    )
    with pytest.raises(LaunchError, match="starts a single process"):
        check_launch({"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"})
    check_world_size(2, {"WORLD_SIZE": "2"})
    check_world_size(1, {})
    with pytest.raises(LaunchError, match="2 processes were launched.*world size of 1"):
        check_world_size(1, {"WORLD_SIZE": "2"})
    check_nonfinite_mode("skip", {})
    check_nonfinite_mode("stop", {"ACCELERATE_USE_DEEPSPEED": "true"})
    with pytest.raises(ConfigError, match="on_nonfinite=skip does not work under DeepSpeed"):
        check_nonfinite_mode("skip", {"ACCELERATE_USE_DEEPSPEED": "true"})
