"""The README's runnable examples run as written (offline, tiny models)."""

import os
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

pytestmark = pytest.mark.slow  # multi-process, subprocess or whole-pipeline tests: `make test` only


@pytest.mark.parametrize("script", ["custom_loop.py", "sft_trainer.py", "python_api.py"])
def test_example_runs(script, tmp_path):
    # PYTHONPATH passes through so a worktree's tests run its own symnoise, not an installed one
    inherited = {"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ else {}
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "examples" / script)],
        capture_output=True,
        text=True,
        timeout=300,
        env={
            "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
            "PATH": "/usr/bin:/bin",
            "HOME": str(tmp_path),
            **inherited,
        },
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stdout.splitlines() if "loss" in line]
    assert len(lines) >= 4
    if script == "python_api.py":
        assert [line.split(":")[0] for line in lines[-4:]] == ["step 1", "step 2", "step 3", "step 4"]
        assert all(
            "noise norm 2.8868" in line for line in lines[-4:]
        )  # SymNoise, alpha 5, from the shipped config
    if script == "custom_loop.py":
        assert "noise norm 2.8868" in proc.stdout  # alpha / sqrt(3) for every SymNoise step
