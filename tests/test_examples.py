"""The README's runnable examples run as written (offline, tiny models)."""

import subprocess
import sys

import pytest
from conftest import REPO_ROOT


@pytest.mark.parametrize("script", ["custom_loop.py", "sft_trainer.py"])
def test_example_runs(script):
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "examples" / script)], capture_output=True, text=True,
                          timeout=300, env={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
                                            "PATH": "/usr/bin:/bin", "HOME": str(REPO_ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stdout.splitlines() if "loss" in line]
    assert len(lines) >= 4
    if script == "custom_loop.py":
        assert "noise norm 2.8868" in proc.stdout  # alpha / sqrt(3) for every SymNoise step
