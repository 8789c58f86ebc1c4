"""Install as a user would, outside the checkout: build the wheel, install it into a fresh virtual environment,
list and copy a shipped config, train a few LoRA steps on a tiny model, export the merged model, load it with
plain transformers.

Nothing is downloaded: the wheel is built without build isolation, and the fresh environment sees this
environment's packages (torch, transformers, ...) through a .pth file, while symnoise itself comes only from
the wheel (no PYTHONPATH, no checkout on the path)."""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from conftest import REPO_ROOT

pytestmark = pytest.mark.slow  # multi-process, subprocess or whole-pipeline tests: `make test` only


def run(args, cwd, env, timeout=300):
    proc = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"{args}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.slow
def test_wheel_installs_and_runs_outside_the_checkout(base_model, alpaca_file, tmp_path):
    source = tmp_path / "source"  # a copy, so the build leaves nothing in the checkout
    shutil.copytree(
        REPO_ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, source / name)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            tmp_path / "dist",
            source,
        ],
        tmp_path,
        env,
    )
    wheel = next((tmp_path / "dist").glob("symnoise-*.whl"))

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], tmp_path, env)
    python = venv / "bin" / "python"
    run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel],
        tmp_path,
        env,
    )
    site = Path(
        run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path, env
        ).strip()
    )
    (site / "_shared_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    where = run([python, "-c", "import symnoise; print(symnoise.__file__)"], tmp_path, env)
    assert where.startswith(str(venv)), where

    work = tmp_path / "user"
    work.mkdir()
    symnoise = venv / "bin" / "symnoise"
    listed = run([symnoise, "configs", "list"], work, env)
    assert "qwen2.5-0.5b/alpaca-symnoise-lora" in listed and "llama2-7b/alpaca-symnoise" in listed
    run([symnoise, "configs", "copy", "qwen2.5-0.5b/alpaca-symnoise-lora", "my-run.yaml"], work, env)
    trained = run(
        [
            symnoise,
            "train",
            "my-run.yaml",
            f"model.name={base_model}",
            f"data.path={alpaca_file}",
            "data.template=alpaca",
            "data.max_length=96",
            "training.output_dir=runs/tiny-lora",
            "training.max_steps=2",
            "training.per_device_batch_size=4",
            "training.effective_batch_size=8",
            "training.learning_rate=1e-2",
            "training.device=cpu",
            "training.report_to=[]",
            "training.gradient_checkpointing=false",
            "lora.target_modules=[q_proj,v_proj]",
        ],
        work,
        env,
    )
    assert "finished 2 steps" in trained
    assert (work / "runs/tiny-lora/adapter_model.safetensors").is_file()
    run([symnoise, "export", "runs/tiny-lora", "--merge-lora", "merged"], work, env)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(work / "merged")
    tokenizer = AutoTokenizer.from_pretrained(work / "merged")
    assert not any("lora" in key for key in model.state_dict())
    out = model.generate(**tokenizer("Add 1 and 2.", return_tensors="pt"), max_new_tokens=3, do_sample=False)
    assert out.shape[1] > 3


def test_readme_extras_table_matches_pyproject():
    """Every extra's row in the README names exactly the packages pyproject.toml gives it (setuptools aside)."""
    import re

    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

    extras = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    rows = {
        m.group(1): set(re.findall(r"`([^`]+)`", m.group(2)))
        for m in re.finditer(r"^\| `(\w+)` \| ([^|]*) \|", (REPO_ROOT / "README.md").read_text(), re.M)
    }
    for extra, requirements in extras.items():
        names = {re.split(r"[<>=\[ ]", r)[0] for r in requirements} - {"setuptools"}
        assert rows.get(extra) == names, (extra, rows.get(extra), names)
