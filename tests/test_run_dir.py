"""One run per run directory: the lock, the start record and `--resume`'s config comparison, fresh runs that
never append to an earlier run, `--overwrite` deleting only symnoise's files, and the grid's per-cell check."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT, run_symnoise
from test_reliability import DRIVER, Crash, logged_steps
from test_train import tiny_config
from transformers import Trainer

from symnoise.layout import LOCK_FILE, START_RECORD
from symnoise.train import ConfigError, train
from symnoise.train.metrics import jsonl_to_csv
from symnoise.train.run_lock import RunLock, RunLockedError
from symnoise.train.start_record import config_changes

pytestmark = pytest.mark.slow  # multi-process, subprocess or whole-pipeline tests: `make test` only

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT / "src")}


def cli(*args, timeout=300):
    """`symnoise train ARGS` as a subprocess (conftest's `run_symnoise`)."""
    return run_symnoise(["train", *args], env=ENV, timeout=timeout)


def write_config(path, config):
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    return path


def metric_steps(run_dir):
    return [
        json.loads(line)["step"]
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
        if '"loss"' in line
    ]


def unfinished_run(base_model, alpaca_file, out, **overrides):
    """A 4-step run cut back to what a kill after step 3 leaves: checkpoint-2, no final model."""
    import shutil

    config = tiny_config(base_model, alpaca_file, out, **overrides)
    train(config)
    shutil.rmtree(out / "checkpoint-4")
    for name in ("model.safetensors", "train_summary.json"):
        (out / name).unlink()
    return config


def crash_at_step(monkeypatch, step):
    original = Trainer._maybe_log_save_evaluate

    def crash(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if self.state.global_step == step:
            raise Crash

    monkeypatch.setattr(Trainer, "_maybe_log_save_evaluate", crash)


# ------------------------------------------------------------------------------------------ --resume
@pytest.mark.slow
def test_resume_with_a_training_change_is_refused_naming_every_field(base_model, alpaca_file, tmp_path):
    """The issue's three cases through the CLI at once: each field is named with both values, nothing is written,
    and config.yaml still describes the training; a logging change is allowed and recorded."""
    out = tmp_path / "run"
    config_file = write_config(tmp_path / "c.yaml", unfinished_run(base_model, alpaca_file, out))
    config_before = (out / "config.yaml").read_text()
    proc = cli(
        config_file, "--resume", "noise.alpha=10", "noise.method=neftune", "training.learning_rate=1e-2"
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    for line in (
        "noise.alpha: 5.0 -> 10.0",
        "noise.method: 'symnoise' -> 'uniform'",
        "training.learning_rate: 0.001 -> 0.01",
    ):
        assert line in proc.stderr, proc.stderr
    assert "would mix two configs" in proc.stderr
    assert (out / "config.yaml").read_text() == config_before
    assert metric_steps(out) == [1, 2, 3, 4] and not (out / "model.safetensors").exists()

    proc = cli(config_file, "training.logging_steps=2", "training.save_total_limit=3", "--resume")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "training.logging_steps: 1 -> 2 (does not change training; allowed)" in proc.stderr
    record = json.loads((out / START_RECORD).read_text())
    assert record["config"]["noise"]["alpha"] == 5.0
    assert record["resumes"][-1]["from"] == "checkpoint-2"
    assert record["resumes"][-1]["harmless_changes"] == {
        "training.logging_steps": [1, 2],
        "training.save_total_limit": [2, 3],
    }
    assert (out / "model.safetensors").is_file()


def test_resume_refuses_changed_data_content(base_model, alpaca_file, tmp_path):
    out = tmp_path / "run"
    data = tmp_path / "train.json"
    data.write_bytes(alpaca_file.read_bytes())
    config = unfinished_run(base_model, data, out)
    rows = json.loads(data.read_text())
    rows[0]["output"] = "a different answer"
    data.write_text(json.dumps(rows))
    with pytest.raises(ConfigError, match=r"data file content: sha256 \w+… \(\d+ bytes\) -> sha256"):
        train(config, resume=True)


def test_resume_refuses_a_local_model_whose_files_changed(base_model, alpaca_file, tmp_path):
    """A LoRA or full run resumed on a base model rewritten since its start would mix two models; an identical
    copy (new file times, same bytes) is the same model."""
    import shutil

    from safetensors.torch import load_file, save_file

    from symnoise.train.start_record import read_start_record, run_changes

    model = tmp_path / "model"
    shutil.copytree(base_model, model)
    out = tmp_path / "run"
    config = unfinished_run(model, alpaca_file, out)
    record = read_start_record(out)
    assert set(record["model"]["files"]) == {"config.json", "model.safetensors"}

    original = model / "model.safetensors"
    kept = tmp_path / "kept.safetensors"
    shutil.copy(original, kept)
    weights = load_file(original)
    name = sorted(weights)[-1]
    weights[name] = weights[name] + 1e-3
    save_file(weights, original, metadata={"format": "pt"})
    with pytest.raises(
        ConfigError,
        match=re.escape(f"model files ({model}): as at the start -> changed since: model.safetensors"),
    ):
        train(config, resume=True)

    shutil.copy(kept, original)  # the same bytes again, with a new modification time
    assert [c.field for c in run_changes(record, config)] == []


def test_sampled_weight_hash_reads_blocks_spread_over_a_large_file(tmp_path):
    from symnoise.train.start_record import BLOCK_BYTES, SAMPLED_BLOCKS, _sampled_sha256

    big = tmp_path / "model.safetensors"
    size = 3 * SAMPLED_BLOCKS * BLOCK_BYTES + 12_345
    big.write_bytes(bytes(size))
    before = _sampled_sha256(big)
    with big.open("r+b") as handle:  # one byte inside the 10th block
        handle.seek(10 * (size - BLOCK_BYTES) // (SAMPLED_BLOCKS - 1) + 7)
        handle.write(b"\x01")
    assert _sampled_sha256(big) != before


@pytest.mark.slow
def test_resume_loads_the_hub_commit_the_run_started_with(base_model, alpaca_file, tmp_path):
    """The hub branch moves between the start and the resume (here to a model of another shape, which the
    checkpoint could not be loaded into): --resume still loads the recorded commit, and says so."""
    import shutil

    hub = tmp_path / "hub"
    repo = hub / "models--symnoise-test--tiny"
    first, second = "a" * 40, "b" * 40
    shutil.copytree(base_model, repo / "snapshots" / first)
    shutil.copytree(base_model, repo / "snapshots" / second)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(first)
    env = {**ENV, "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "run"
    config_file = write_config(tmp_path / "c.yaml", tiny_config("symnoise-test/tiny", alpaca_file, out))
    started = subprocess.run(
        [sys.executable, "-m", "symnoise", "train", str(config_file)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert started.returncode == 0, started.stderr[-2000:]
    assert json.loads((out / START_RECORD).read_text())["model"] == {
        "hub": "symnoise-test/tiny",
        "revision": None,
        "commit": first,
    }
    shutil.rmtree(out / "checkpoint-4")
    for name in ("model.safetensors", "train_summary.json"):
        (out / name).unlink()
    moved = json.loads((repo / "snapshots" / second / "config.json").read_text())
    moved["hidden_size"], moved["intermediate_size"] = 48, 96
    (repo / "snapshots" / second / "config.json").write_text(json.dumps(moved))
    (repo / "refs" / "main").write_text(second)

    resumed = subprocess.run(
        [sys.executable, "-m", "symnoise", "train", str(config_file), "--resume"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (
        f"--resume: loading symnoise-test/tiny at commit {first}, the one this run started with"
        in resumed.stderr
    )
    assert metric_steps(out) == [1, 2, 3, 4] and (out / "model.safetensors").is_file()


def test_field_classification():
    """Output paths that resolve the same are no change; a relative and an absolute spelling of another path,
    logging and eval cadence are harmless; everything else (and integers equal as floats) as expected."""
    base = tiny_config("m", "d.json", "runs/a")
    recorded = base.to_dict()
    same_dir = tiny_config("m", "d.json", str(Path("runs/a").resolve()))
    assert config_changes(recorded, same_dir) == []
    changed = tiny_config(
        "m",
        "d.json",
        "runs/a",
        training__logging_steps=5,
        training__eval_steps=3,
        training__warmup_ratio=0.1,
        data__max_length=64,
        lora__r=8,
        training__seed=1,
    )
    found = {c.field: c.harmless for c in config_changes(recorded, changed)}
    assert found == {
        "training.logging_steps": True,
        "training.eval_steps": True,
        "training.warmup_ratio": False,
        "data.max_length": False,
        "lora.r": False,
        "training.seed": False,
    }
    recorded["training"]["learning_rate"] = 1e-3  # the same number, spelled as a float
    assert config_changes(recorded, base) == []


# ------------------------------------------------------------------------------------------ fresh runs
@pytest.mark.slow
def test_fresh_run_after_a_kill_before_the_first_checkpoint(base_model, alpaca_file, tmp_path, monkeypatch):
    """It is refused (naming --resume and --overwrite) instead of appending to the old metrics.jsonl; a torn last
    line there does not matter; --resume starts again from step 0 and --overwrite replaces the run."""
    out = tmp_path / "run"
    config = tiny_config(base_model, alpaca_file, out, training__save_steps=3)
    with monkeypatch.context() as patch:
        crash_at_step(patch, 2)
        with pytest.raises(Crash):
            train(config)
    with (out / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 3, "lo')  # torn by the kill
    assert metric_steps(out) == [1, 2] and not list(out.glob("checkpoint-*"))
    config_file = write_config(tmp_path / "c.yaml", config)
    proc = cli(config_file)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert (
        f"training.output_dir: {out} already holds a run (an unfinished run that stopped before its first "
        "checkpoint); pass --resume to start it again from step 0 with the config it was started with, "
        "pass --overwrite to delete it and start a new run, or choose another output_dir"
    ) in proc.stderr
    with pytest.raises(ConfigError, match=r"noise.alpha: 5.0 -> 7.0"):
        train(
            tiny_config(base_model, alpaca_file, out, training__save_steps=3, noise__alpha=7.0), resume=True
        )
    assert train(config, resume=True).steps == 4
    assert metric_steps(out) == [1, 2, 3, 4]
    assert json.loads((out / START_RECORD).read_text())["resumes"][-1]["from"].startswith("step 0")

    proc = cli(config_file, "noise.alpha=7", "--overwrite")  # a new run replaces the finished one
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert metric_steps(out) == [1, 2, 3, 4]
    assert json.loads((out / START_RECORD).read_text())["config"]["noise"]["alpha"] == 7.0
    assert len((out / "metrics.csv").read_text().splitlines()) == 1 + len(logged_steps(out))


def test_user_files_in_output_dir_are_never_overwritten(base_model, alpaca_file, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "README.md").write_text("my notes\n")
    (out / "config.yaml").write_text("my: config\n")
    config_file = write_config(tmp_path / "c.yaml", tiny_config(base_model, alpaca_file, out))
    expected = (
        f"training.output_dir: {out} holds files symnoise did not write (README.md, config.yaml); "
        "symnoise never overwrites or deletes them"
    )
    proc = cli(config_file)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and expected in proc.stderr
    with pytest.raises(ConfigError, match=re.escape(expected)):
        train(tiny_config(base_model, alpaca_file, out), overwrite=True)
    assert (out / "README.md").read_text() == "my notes\n" and (
        out / "config.yaml"
    ).read_text() == "my: config\n"
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.yaml"]  # not even a lock file left


def test_overwrite_removes_only_symnoise_files(base_model, alpaca_file, tmp_path):
    out = tmp_path / "run"
    config = tiny_config(base_model, alpaca_file, out, training__max_steps=2)
    train(config)
    (out / "my_notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match=r"holds files symnoise did not write \(my_notes.txt\)"):
        train(config, overwrite=True)
    (out / "my_notes.txt").unlink()
    (out / "eval").mkdir()  # written beside a run by `symnoise grid`: kept
    (out / "eval" / "stats.json").write_text("{}")
    for folder in (
        "model_outputs_judged",
        "analysis",
    ):  # written beside a run by `symnoise judge` / `analyze`
        (out / folder).mkdir()
        (out / folder / "metrics.json").write_text("{}")
    train(config, overwrite=True)
    assert (out / "eval" / "stats.json").read_text() == "{}"
    assert all((out / f / "metrics.json").read_text() == "{}" for f in ("model_outputs_judged", "analysis"))
    assert metric_steps(out) == [1, 2]
    with pytest.raises(ConfigError, match="--resume and --overwrite contradict"):
        train(config, resume=True, overwrite=True)


def test_a_torn_metrics_line_never_fails_a_finished_run(base_model, alpaca_file, tmp_path, monkeypatch):
    out = tmp_path / "run"
    original = Trainer.save_model

    def tear_then_save(self, output_dir=None, *args, **kwargs):
        if str(output_dir).endswith("tmp-final"):
            with (out / "metrics.jsonl").open("a") as handle:
                handle.write('{"step": 5, "lo')
        return original(self, output_dir, *args, **kwargs)

    monkeypatch.setattr(Trainer, "save_model", tear_then_save)
    result = train(tiny_config(base_model, alpaca_file, out))
    assert result.steps == 4 and json.loads((out / "train_summary.json").read_text())["finished"]
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + len(logged_steps(out)) and logged_steps(out)[-1] != 5


def test_jsonl_to_csv_skips_lines_that_are_not_objects(tmp_path):
    log = tmp_path / "m.jsonl"
    log.write_text('{"step": 1, "loss": 2.0}\n[1, 2]\n\n{"step": 2, "loss": 1.5, "lr": 0.1}\n{"step": 3, "lo')
    jsonl_to_csv(log, tmp_path / "m.csv")
    assert (tmp_path / "m.csv").read_text().splitlines() == ["step,loss,lr", "1,2.0,", "2,1.5,0.1"]


# ------------------------------------------------------------------------------------------ the lock
def test_lock_names_its_holder_and_a_stale_lock_is_taken_over(tmp_path, caplog):
    held = RunLock(tmp_path).acquire()
    with pytest.raises(RunLockedError) as error:
        RunLock(tmp_path).acquire()
    assert (
        f"is in use by another symnoise run (PID {os.getpid()} on host {socket.gethostname()}, started"
        in str(error.value)
    )
    held.release()
    assert (tmp_path / LOCK_FILE).read_text() == ""  # released: not a stale lock
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": 999999999, "host": "gone", "started_at": "then"}))
    with caplog.at_level("WARNING", logger="symnoise.train"):
        lock = RunLock(tmp_path).acquire()  # the OS lock is free: its holder died
    assert "took over the lock" in caplog.text and "PID 999999999 on host gone" in caplog.text
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()


@pytest.mark.slow
def test_second_run_into_a_busy_directory_is_refused_then_a_killed_holder_is_taken_over(
    base_model, alpaca_file, tmp_path
):
    """Two real processes: the second is refused with the first's PID and host while the first trains; after a
    kill -9 of the first, --resume takes the stale lock over and finishes the run with each step logged once."""
    out = tmp_path / "run"
    config_file = write_config(
        tmp_path / "c.yaml", tiny_config(base_model, alpaca_file, out, training__max_steps=6)
    )
    first = subprocess.Popen(
        [sys.executable, "-c", DRIVER, "2", "train", str(config_file)],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 240
    while not (out / "checkpoint-2" / "trainer_state.json").is_file():
        assert first.poll() is None and time.monotonic() < deadline, "the first run ended too early"
        time.sleep(0.05)
    second = cli(config_file)
    assert first.poll() is None, "the first run ended before the second was refused"
    assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr[-2000:]
    assert (
        f"is in use by another symnoise run (PID {first.pid} on host {socket.gethostname()}, started"
        in second.stderr
    )
    first.send_signal(signal.SIGKILL)
    assert first.wait(timeout=60) == -signal.SIGKILL
    resumed = cli(config_file, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (
        f"took over the lock {out / LOCK_FILE} left by a run that is no longer running (PID {first.pid}"
        in resumed.stderr
    )
    assert metric_steps(out) == [1, 2, 3, 4, 5, 6]


# ------------------------------------------------------------------------------------------ grid
def test_grid_cell_killed_mid_training_is_not_resumed_with_another_config(tmp_path, monkeypatch):
    from test_grid import tiny_grid

    from symnoise.grid import validate_grid
    from symnoise.grid.runner import run_grid

    data = tiny_grid(tmp_path, methods=["none"])
    data["evaluation"] = {}
    data["base"]["training"]["max_steps"] = 3
    with monkeypatch.context() as patch:
        crash_at_step(patch, 2)
        with pytest.raises(Crash):
            run_grid(validate_grid(data), log=lambda line: None)
    data["base"]["training"]["learning_rate"] = 2e-3
    outcome = run_grid(validate_grid(data), log=lambda line: None)
    cell = outcome.cells[0]
    assert cell.status == "failed" and "StaleCellError" in cell.error
    assert (
        "training.learning_rate: 0.001 -> 0.002" in cell.error and "delete the cell directory" in cell.error
    )
    run_dir = tmp_path / "grid" / "cells" / cell.cell
    assert json.loads((run_dir / START_RECORD).read_text())["config"]["training"]["learning_rate"] == 1e-3
    data["base"]["training"]["learning_rate"] = (
        1e-3  # back to what it was started with: the cell trains again
    )
    outcome = run_grid(validate_grid(data), log=lambda line: None)
    assert outcome.cells[0].status == "finished"
    assert metric_steps(run_dir) == [1, 2, 3]
