"""A `symnoise train` that fails before it trains (here: a hub model that cannot be loaded offline) leaves no
folder behind that it created: not the run directory, not the parents it made for it. Folders that existed
before the run stay, empty or not.

Each case runs the real command in a subprocess, from a copied starter config, as a new user would."""

from __future__ import annotations

import os

import pytest
from conftest import REPO_ROOT, run_symnoise

# A starter config; its training.output_dir is runs/qwen2.5-0.5b/alpaca-symnoise-lora.
STARTER = "qwen2.5-0.5b/alpaca-symnoise-lora"


def symnoise(args, cwd, env):
    return run_symnoise(args, cwd, env, timeout=120)


@pytest.fixture
def offline_env(tmp_path):
    """HF_HUB_OFFLINE=1 with an empty Hugging Face cache outside the working folder."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_CACHE", "HF_ENDPOINT")}
    env.update(PYTHONPATH=str(REPO_ROOT / "src"), HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf-home"))
    return env


def test_a_hub_model_that_cannot_load_leaves_no_empty_folders(tmp_path, alpaca_file, offline_env):
    work = tmp_path / "work"
    work.mkdir()
    assert symnoise(["configs", "copy", STARTER, "my.yaml"], work, offline_env).returncode == 0
    proc = symnoise(
        ["train", "my.yaml", "model.name=someorg/not-a-cached-model", f"data.path={alpaca_file}"],
        work,
        offline_env,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "someorg/not-a-cached-model" in proc.stderr and "HF_HUB_OFFLINE is set" in proc.stderr
    assert not (work / "runs").exists()
    assert sorted(p.name for p in work.iterdir()) == ["my.yaml"]


@pytest.mark.parametrize(
    ("existing", "output_dir", "left"),
    [
        # the run directory existed (empty): it stays
        (["runs/mine"], "runs/mine", ["runs", "runs/mine"]),
        # only the top folder existed: what the run made below it goes
        (["runs"], "runs/a/b/run", ["runs"]),
        # a folder beside the run's holds a user's file: it stays with everything above it
        (["runs/a/notes"], "runs/a/run", ["runs", "runs/a", "runs/a/notes"]),
    ],
)
def test_folders_that_existed_before_the_run_stay(
    tmp_path, alpaca_file, offline_env, existing, output_dir, left
):
    work = tmp_path / "work"
    for folder in existing:
        (work / folder).mkdir(parents=True)
    proc = symnoise(
        [
            "train",
            STARTER,
            "model.name=someorg/not-a-cached-model",
            f"data.path={alpaca_file}",
            f"training.output_dir={output_dir}",
        ],
        work,
        offline_env,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert sorted(p.relative_to(work).as_posix() for p in work.rglob("*")) == left
