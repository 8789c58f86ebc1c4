"""Offline, or with the hub unreachable, commands fail in seconds with one message that says what was looked for
and how to give it locally; a path-like name that exists nowhere is reported as a missing local path first.

Each case runs the real `symnoise` command in a subprocess (HF_ENDPOINT on the discard port refuses at once).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import yaml
from conftest import REPO_ROOT, run_symnoise
from test_train import tiny_config

pytestmark = pytest.mark.slow  # multi-process, subprocess or whole-pipeline tests: `make test` only


def symnoise_env(tmp_path, offline: bool) -> dict:
    """The environment of a machine without the hub and without local data: an empty Hugging Face cache, no
    data folder; either HF_HUB_OFFLINE=1 or an endpoint that refuses connections."""
    drop = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "SYMNOISE_DATA_DIR", "HF_HUB_CACHE", "HF_DATASETS_CACHE")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(PYTHONPATH=str(REPO_ROOT / "src"), HF_HOME=str(tmp_path / "hf"))
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    else:
        env["HF_ENDPOINT"] = "http://127.0.0.1:9"  # the discard port: connection refused
    return env


def timed_symnoise(args, env, cwd) -> tuple[subprocess.CompletedProcess, float]:
    """conftest's `run_symnoise`, and how long it took."""
    started = time.perf_counter()
    proc = run_symnoise(args, cwd=cwd, env=env, timeout=120)
    return proc, time.perf_counter() - started


def import_seconds(module: str, env) -> float:
    """How long importing the command's module takes here and now (the shared test machine is often loaded):
    the time a command needs beyond it is what its own checks cost."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import {module}"], env=env, check=True, timeout=120)
    return time.perf_counter() - started


def error_lines(stderr: str) -> list[str]:
    """The command's error lines (``error: ...`` or ``symnoise leaderboard: error: ...``)."""
    return [line for line in stderr.splitlines() if line.startswith("error:") or ": error:" in line]


@pytest.mark.parametrize("offline", [False, True], ids=["hub-unreachable", "HF_HUB_OFFLINE"])
def test_leaderboard_without_hub_or_local_data_fails_in_seconds(tmp_path, base_model, offline):
    """Before: about 36 s of retries, then a 60-line ConnectionError traceback for allenai/ai2_arc."""
    env = symnoise_env(tmp_path, offline)
    startup = import_seconds("symnoise.cli.leaderboard", env)
    proc, seconds = timed_symnoise(
        ["leaderboard", str(base_model), "--tasks", "arc", "--limit", "1", "--device", "cpu"], env, tmp_path
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    [message] = error_lines(proc.stderr)
    assert "allenai/ai2_arc" in message and "--data-dir" in message and "SYMNOISE_DATA_DIR" in message
    assert ("HF_HUB_OFFLINE" if offline else "http://127.0.0.1:9 cannot be reached") in message
    assert seconds < 10 or seconds - startup < 10, f"{seconds:.1f} s, of which {startup:.1f} s importing"
    where = "offline" if offline else "hub unreachable"
    print(f"\nleaderboard, {where}: refused after {seconds:.1f} s ({startup:.1f} s importing)\n{message}")


def test_leaderboard_hub_checkpoint_without_the_hub_fails_in_seconds(tmp_path, shared_data):
    """With local task data, a hub checkpoint that is not cached is the one thing missing: named at once."""
    env = symnoise_env(tmp_path, offline=False)
    startup = import_seconds("symnoise.cli.leaderboard", env)
    proc, seconds = timed_symnoise(
        ["leaderboard", "symnoise-test/not-cached-model", "--tasks", "arc", "--data-dir", str(shared_data)],
        env,
        tmp_path,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    [message] = error_lines(proc.stderr)
    assert "symnoise-test/not-cached-model" in message and "http://127.0.0.1:9 cannot be reached" in message
    assert seconds < 10 or seconds - startup < 10, f"{seconds:.1f} s, of which {startup:.1f} s importing"


def write_config(tmp_path, model, data) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config(model, data, tmp_path / "run").to_dict()))
    return str(path)


@pytest.mark.parametrize("offline", [False, True], ids=["hub-unreachable", "HF_HUB_OFFLINE"])
def test_a_missing_local_model_path_with_one_slash_is_named_as_a_path_first(tmp_path, alpaca_file, offline):
    """`runs/no-such-model` beside an existing `runs/` folder: before, only the hub was blamed ("connect to the
    network")."""
    (tmp_path / "runs" / "other-run").mkdir(parents=True)
    proc, seconds = timed_symnoise(
        ["train", write_config(tmp_path, "runs/no-such-model", alpaca_file)],
        symnoise_env(tmp_path, offline),
        tmp_path,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    [message] = error_lines(proc.stderr)
    local = message.index("no local folder runs/no-such-model")
    hub = message.index("Hugging Face cache")
    assert local < hub, message
    assert "runs/ holds other-run" in message
    assert "If it is a local folder, correct the path" in message
    assert ("unset HF_HUB_OFFLINE" if offline else "connect to the network") in message
    assert not (tmp_path / "run").exists()
    assert seconds < 60


@pytest.mark.parametrize("offline", [False, True], ids=["hub-unreachable", "HF_HUB_OFFLINE"])
def test_a_missing_local_data_path_with_one_slash_is_named_as_a_path_first(tmp_path, base_model, offline):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text("{}\n")
    proc, _ = timed_symnoise(
        ["train", write_config(tmp_path, base_model, "data/no-such-set")],
        symnoise_env(tmp_path, offline),
        tmp_path,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    [message] = error_lines(proc.stderr)
    assert message.index("no local file or folder data/no-such-set") < message.index("Hugging Face cache")
    assert "data/ holds train.jsonl" in message
    assert "If it is a local file, correct the path" in message
    assert ("unset HF_HUB_OFFLINE" if offline else "connect to the network") in message


def test_generate_without_prompts_and_without_the_hub_fails_in_seconds(tmp_path, base_model):
    """The AlpacaEval prompts come from the hub when no data folder is named: before, huggingface_hub retried
    for about 30 s first."""
    env = symnoise_env(tmp_path, offline=False)
    startup = import_seconds("symnoise.cli.generate", env)
    proc, seconds = timed_symnoise(
        ["generate", str(base_model), "--out", str(tmp_path / "o.json")], env, tmp_path
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    [message] = error_lines(proc.stderr)
    assert "tatsu-lab/alpaca_eval" in message and "--data-dir" in message and "SYMNOISE_DATA_DIR" in message
    assert "http://127.0.0.1:9 cannot be reached" in message
    assert seconds < 10 or seconds - startup < 10, f"{seconds:.1f} s, of which {startup:.1f} s importing"
    assert not (tmp_path / "o.json").exists()


@pytest.mark.parametrize("offline", [False, True], ids=["hub-unreachable", "HF_HUB_OFFLINE"])
def test_generate_with_a_hub_model_it_cannot_get_fails_in_seconds(tmp_path, offline):
    """Before: transformers' retries, then a 60-line OSError traceback, exit 1."""
    env = symnoise_env(tmp_path, offline)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"instruction": "Say hi."}\n')
    proc, seconds = timed_symnoise(
        [
            "generate",
            "someorg/some-model",
            "--prompts",
            str(prompts),
            "--template",
            "alpaca",
            "--output",
            "out.json",
        ],
        env,
        tmp_path,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    [message] = error_lines(proc.stderr)
    assert "MODEL: someorg/some-model is not a local folder and is not in the Hugging Face cache" in message
    assert ("unset HF_HUB_OFFLINE" if offline else "http://127.0.0.1:9 cannot be reached") in message
    assert "give a run directory or a local model folder as MODEL" in message
    assert not list(tmp_path.glob("out*")), "nothing written"
