"""Reliability of `symnoise train`: exact resume after SIGKILL, atomic checkpoints, non-finite steps, a full
disk, safe loading of checkpoints and models, writes confined to the run directory, no secrets on disk."""

import ast
import errno
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO_ROOT
from safetensors.torch import load_file
from test_train import tiny_config
from transformers import Trainer

from symnoise.train import ConfigError, train
from symnoise.train import recipe as R
from symnoise.train.config import validate_config
from symnoise.train.reliability import (
    CheckpointWriteError,
    NonFiniteError,
    last_complete_checkpoint,
    truncate_log,
)

STEPS = 6
CHECKPOINT_FILES = {
    "model.safetensors",
    "optimizer.pt",
    "scheduler.pt",
    "rng_state.pth",
    "trainer_state.json",
    "symnoise_noise_rank0.pt",
}
KILLS: list[str] = []  # what each kill test saw, printed at the end for docs/reliability.md


@pytest.fixture
def one_thread():
    """Bitwise comparisons between processes need the same reduction order: one intra-op thread everywhere."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


METHODS = {
    "uniform": {"method": "uniform"},
    "gaussian": {"method": "gaussian"},
    "bernoulli": {"method": "bernoulli"},
    "symnoise-concat": {"method": "symnoise", "execution": "concat"},
    "symnoise-paired": {"method": "symnoise", "execution": "paired"},
}


def method_config(base_model, alpaca_file, out, method, **overrides):
    noise = {"alpha": 5.0, "seed": 0, **METHODS[method]}
    config = tiny_config(
        base_model,
        alpaca_file,
        out,
        training__max_steps=STEPS,
        training__save_steps=2,
        training__save_total_limit=2,
        **overrides,
    )
    data = config.to_dict()
    data["noise"] = noise
    return validate_config(data)


def step_records(run_dir):
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if '"loss"' in line]


def assert_same_run(resumed, reference):
    """Per-step losses, gradient and noise norms, and the final weights file, bit for bit."""
    got, want = step_records(resumed), step_records(reference)
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))  # each step logged exactly once
    for key in ("loss", "grad_norm", "noise_norm", "learning_rate"):
        assert [r.get(key) for r in got] == [r.get(key) for r in want], key
    assert (resumed / "model.safetensors").read_bytes() == (reference / "model.safetensors").read_bytes()


@pytest.fixture(scope="module")
def references(base_model, alpaca_file, tmp_path_factory):
    """Uninterrupted runs, one per method, computed on first use."""
    cache = {}

    def get(method):
        if method not in cache:
            out = tmp_path_factory.mktemp("reference") / method
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                train(method_config(base_model, alpaca_file, out, method))
            finally:
                torch.set_num_threads(threads)
            cache[method] = out
        return cache[method]

    return get


class Crash(BaseException):
    """Stands for a process dying: not an Exception, so nothing on the way out can handle it."""


@pytest.mark.parametrize("method", ["uniform", "gaussian", "bernoulli"])
def test_resume_after_crash_equals_uninterrupted(
    base_model, alpaca_file, tmp_path, monkeypatch, one_thread, references, method
):
    """In-process crash after step 3 was logged (checkpoint-2 is the last); --resume reproduces the run."""
    out = tmp_path / "run"
    config = method_config(base_model, alpaca_file, out, method)
    original = Trainer._maybe_log_save_evaluate

    def crash_after_step_3(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if self.state.global_step == 3:
            raise Crash

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "_maybe_log_save_evaluate", crash_after_step_3)
        with pytest.raises(Crash):
            train(config)
    assert [r["step"] for r in step_records(out)] == [1, 2, 3]
    assert last_complete_checkpoint(out).name == "checkpoint-2"
    train(config, resume=True)
    assert_same_run(out, references(method))


# ------------------------------------------------------------------------------------------ real SIGKILL
DRIVER = """
import sys, time
from transformers import Trainer
slow = float(sys.argv[1])
step, save = Trainer.training_step, Trainer._save_optimizer_and_scheduler
def training_step(self, *args, **kwargs):
    time.sleep(slow)  # room to kill between steps; the numbers are untouched
    return step(self, *args, **kwargs)
def save_optimizer_and_scheduler(self, *args, **kwargs):
    time.sleep(4 * slow)  # a slow disk: room to kill in the middle of a checkpoint
    return save(self, *args, **kwargs)
Trainer.training_step, Trainer._save_optimizer_and_scheduler = training_step, save_optimizer_and_scheduler
from symnoise.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


def kill_when(process, condition, timeout=240.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if condition():
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    assert process.wait(timeout=60) == -signal.SIGKILL, "the run ended before it could be killed"


def logged_steps(run_dir):
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    steps = []
    for line in path.read_text().splitlines():
        try:
            steps.append(json.loads(line)["step"])
        except (ValueError, KeyError):
            pass
    return steps


@pytest.mark.slow  # a real process killed and resumed: 15-20 s each, `make test` only
@pytest.mark.parametrize(
    "method,when",
    [("symnoise-concat", "between checkpoints"), ("symnoise-paired", "while checkpoint-4 is being written")],
)
def test_sigkill_then_resume_equals_uninterrupted(
    base_model, alpaca_file, tmp_path, one_thread, references, method, when
):
    """``python -m symnoise train`` killed with SIGKILL, then ``--resume``: same losses and weights, bitwise."""
    out = tmp_path / "run"
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(method_config(base_model, alpaca_file, out, method).to_dict()))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT / "src")}
    process = subprocess.Popen(
        [sys.executable, "-c", DRIVER, "0.3", "train", str(config_file)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    if when == "between checkpoints":
        kill_when(process, lambda: 3 in logged_steps(out))
        assert last_complete_checkpoint(out).name == "checkpoint-2"
    else:
        kill_when(
            process, lambda: (out / "tmp-checkpoint-4" / "checkpoint-4" / "model.safetensors").is_file()
        )
        assert (out / "tmp-checkpoint-4").is_dir() and not (out / "checkpoint-4").exists()
        assert last_complete_checkpoint(out).name == "checkpoint-2"
    before = logged_steps(out)
    assert not (out / "model.safetensors").exists()
    assert CHECKPOINT_FILES <= {p.name for p in (out / "checkpoint-2").iterdir()}

    resumed = subprocess.run(
        [sys.executable, "-m", "symnoise", "train", str(config_file), "--resume"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    KILLS.append(f"{method}: killed {when} with steps {before} logged; resumed from checkpoint-2")
    print(f"\n{KILLS[-1]}")
    assert_same_run(out, references(method))
    assert not list(out.glob("tmp-*"))
    for checkpoint in out.glob("checkpoint-*"):
        names = {p.name for p in checkpoint.iterdir()}
        assert CHECKPOINT_FILES <= names and "training_args.bin" not in names, checkpoint


def test_resume_log_and_checkpoint_helpers(tmp_path):
    """metrics.jsonl is cut back to the resumed step (torn last line included); staged or unfinished
    checkpoints never count as a resume point."""
    log = tmp_path / "metrics.jsonl"
    log.write_text(
        "".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (1, 2, 3)) + '{"step": 4, "lo'
    )
    assert truncate_log(log, 2) == 2
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2]
    (tmp_path / "tmp-checkpoint-8" / "checkpoint-8").mkdir(parents=True)
    (tmp_path / "checkpoint-6").mkdir()  # written in place by an old version, cut short: no trainer state
    assert last_complete_checkpoint(tmp_path) is None
    (tmp_path / "checkpoint-4").mkdir()
    (tmp_path / "checkpoint-4" / "trainer_state.json").write_text("{}")
    assert last_complete_checkpoint(tmp_path).name == "checkpoint-4"


def test_resume_refuses_a_run_with_only_an_interrupted_save(base_model, alpaca_file, tmp_path):
    out = tmp_path / "run"
    (out / "tmp-checkpoint-2" / "checkpoint-2").mkdir(parents=True)
    with pytest.raises(ConfigError, match="no checkpoint"):
        train(tiny_config(base_model, alpaca_file, out), resume=True)


# ------------------------------------------------------------------------------------------ non-finite steps
def poison_step(monkeypatch, step_index, seen):
    """Make the loss of optimizer step ``step_index + 1`` NaN (so its gradients are NaN too), and record the
    token ids of that step's micro-batches."""
    original = Trainer.compute_loss

    def compute_loss(self, model, inputs, *args, **kwargs):
        result = original(self, model, inputs, *args, **kwargs)
        if self.state.global_step == step_index:
            seen.append(inputs["input_ids"].clone())
            return result * float("nan")
        return result

    monkeypatch.setattr(Trainer, "compute_loss", compute_loss)


def instructions_in(batches, tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    texts = [tokenizer.decode(row, skip_special_tokens=True) for batch in batches for row in batch]
    return sorted(text.split("### Instruction:\n")[1].split("\n")[0] for text in texts)


def test_nonfinite_step_stops_the_run_and_names_its_examples(base_model, alpaca_file, tmp_path, monkeypatch):
    out = tmp_path / "run"
    seen = []
    poison_step(monkeypatch, 2, seen)
    with pytest.raises(NonFiniteError) as error:
        train(tiny_config(base_model, alpaca_file, out))
    message = str(error.value)
    assert "step 3" in message and "train.json:row" in message and "on_nonfinite=skip" in message
    report = json.loads((out / "nonfinite_steps.jsonl").read_text())
    assert report["step"] == 3 and report["action"] == "stop"
    assert len(report["example_indices"]) == sum(len(batch) for batch in seen) > 0
    rows = json.loads(alpaca_file.read_text())
    reported = sorted(rows[int(source.rsplit(" ", 1)[1])]["instruction"] for source in report["sources"])
    assert reported == instructions_in(seen, base_model)  # the named examples are the ones in the bad batch
    assert not (out / "model.safetensors").exists() and not (out / "checkpoint-4").exists()
    weights = load_file(out / "checkpoint-2" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_nonfinite_step_is_skipped_when_asked(base_model, alpaca_file, tmp_path, monkeypatch):
    out = tmp_path / "run"
    poison_step(monkeypatch, 2, [])
    result = train(
        tiny_config(
            base_model,
            alpaca_file,
            out,
            training__on_nonfinite="skip",
            training__save_steps=1,
            training__save_total_limit=None,
        )
    )
    assert result.steps == 4
    report = [json.loads(line) for line in (out / "nonfinite_steps.jsonl").read_text().splitlines()]
    assert [(r["step"], r["action"]) for r in report] == [(3, "skip")]
    before, skipped, after = (load_file(out / f"checkpoint-{n}" / "model.safetensors") for n in (2, 3, 4))
    assert all(torch.equal(before[k], skipped[k]) for k in before)  # the skipped step changed nothing
    assert any(not torch.equal(skipped[k], after[k]) for k in before)  # the next one trained again
    final = load_file(out / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in final.values())
    # The skipped step's NaN losses stay out of the logged mean (as Trainer's logging_nan_inf_filter, which the
    # recipe turns off, would do): no logged loss is NaN, the later steps' included.
    losses = {record["step"]: record["loss"] for record in step_records(out)}
    assert sorted(losses) == [1, 2, 3, 4] and all(math.isfinite(loss) for loss in losses.values()), losses


# ------------------------------------------------------------------------------------------ disk
def test_too_little_free_space_is_refused_before_training(base_model, alpaca_file, tmp_path, monkeypatch):
    import shutil

    from symnoise.train import reliability

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(reliability.shutil, "disk_usage", lambda path: usage._replace(free=4096))
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"training.output_dir: .* has 0.00 GiB free, but one checkpoint"):
        train(tiny_config(base_model, alpaca_file, out))
    assert not list(out.glob("*checkpoint*")) and not (out / "metrics.jsonl").exists()


def test_disk_full_during_a_checkpoint_keeps_the_last_one(base_model, alpaca_file, tmp_path, monkeypatch):
    out = tmp_path / "run"
    config = tiny_config(base_model, alpaca_file, out, training__save_total_limit=1)
    original = Trainer._save_optimizer_and_scheduler

    def full_at_step_4(self, output_dir):
        if self.state.global_step == 4:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(output_dir))
        return original(self, output_dir)

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "_save_optimizer_and_scheduler", full_at_step_4)
        with pytest.raises(CheckpointWriteError) as error:
            train(config)
    assert str(error.value) == (
        f"could not write checkpoint-4 in {out} (no space left on device); the last complete checkpoint, "
        "checkpoint-2, is intact: fix this and rerun with --resume"
    )
    assert sorted(p.name for p in out.glob("*checkpoint*")) == ["checkpoint-2"]
    assert CHECKPOINT_FILES <= {p.name for p in (out / "checkpoint-2").iterdir()}
    assert not (out / "model.safetensors").exists()
    assert train(config, resume=True).steps == 4


def test_disk_full_while_writing_the_final_model(base_model, alpaca_file, tmp_path, monkeypatch):
    out = tmp_path / "run"
    config = tiny_config(base_model, alpaca_file, out)
    original = Trainer.save_model

    def full_for_the_final_model(self, output_dir=None, *args, **kwargs):
        if str(output_dir).endswith("tmp-final"):
            original(self, output_dir, *args, **kwargs)  # half the files written, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original(self, output_dir, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "save_model", full_for_the_final_model)
        with pytest.raises(
            CheckpointWriteError, match=r"the final model .*no space left.*checkpoint-4, is intact"
        ):
            train(config)
    assert not (out / "model.safetensors").exists() and not (out / "tmp-final").exists()
    assert train(config, resume=True).steps == 4  # nothing left to train: only the final model is written
    final, last = load_file(out / "model.safetensors"), load_file(out / "checkpoint-4" / "model.safetensors")
    assert final.keys() == last.keys() and all(torch.equal(final[k], last[k]) for k in final)


# ------------------------------------------------------------------------------------------ malicious inputs
def torch_load_calls(tree):
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "load"
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "torch"
        ):
            yield node


def test_no_code_path_unpickles_or_trusts_remote_code():
    """Every torch.load passes weights_only=True; nothing imports pickle; remote code is never switched on."""
    loads = 0
    for path in sorted((REPO_ROOT / "src").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for call in torch_load_calls(tree):
            loads += 1
            flags = {k.arg: k.value for k in call.keywords}
            assert (
                isinstance(flags.get("weights_only"), ast.Constant) and flags["weights_only"].value is True
            ), f"{path}:{call.lineno}"
        for node in ast.walk(tree):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            assert not {"pickle", "dill", "cloudpickle", "joblib"} & set(names), f"{path}:{node.lineno}"
            if isinstance(node, ast.keyword) and node.arg == "trust_remote_code":
                assert not (isinstance(node.value, ast.Constant) and node.value.value is True), path
    assert loads >= 1


class CodeOnLoad:
    """A pickle that runs code when loaded with full unpickling: it creates a file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("name", ["symnoise_noise_rank0.pt", "rng_state.pth", "optimizer.pt"])
def test_resume_never_runs_code_from_a_checkpoint(base_model, alpaca_file, tmp_path, name):
    import pickle
    import shutil

    out = tmp_path / "run"
    config = tiny_config(base_model, alpaca_file, out, training__max_steps=4)
    train(config)
    shutil.rmtree(out / "checkpoint-4")  # as if the run had been killed after checkpoint-2
    (out / "model.safetensors").unlink()
    marker = tmp_path / "code-ran"
    torch.save({"state": CodeOnLoad(marker)}, out / "checkpoint-2" / name)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        train(config, resume=True)
    assert not marker.exists()


def test_remote_code_in_a_model_directory_is_not_run(base_model, tmp_path):
    import shutil

    marker = tmp_path / "code-ran"
    model_dir = tmp_path / "model"
    shutil.copytree(base_model, model_dir)
    (model_dir / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "from transformers import LlamaConfig as EvilConfig, "
        "LlamaForCausalLM as EvilModel\n"
    )
    config_file = model_dir / "config.json"
    data = json.loads(config_file.read_text())
    data["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    config_file.write_text(json.dumps(data))
    config = tiny_config(model_dir, "unused.json", tmp_path / "run")
    assert config.model.trust_remote_code is False  # the default
    R.load_model(config, "fp32")  # a known model type: the built-in code is used
    data.pop("model_type")
    config_file.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="trust_remote_code"):
        R.load_model(config, "fp32")  # only remote code could load it: refused
    assert not marker.exists()


# ------------------------------------------------------------------------------------------ writes and secrets
SECRETS = {
    "HF_TOKEN": "hf_FAKEtokenZq81xLmP",
    "HUGGING_FACE_HUB_TOKEN": "hf_FAKEhubJw22rTTa",
    "WANDB_API_KEY": "FAKEwandb9f3c0d6e1a",
    "OPENAI_API_KEY": "sk-FAKEopenaiKk72Hq",
    "SYMNOISE_JUDGE_API_KEY": "FAKEjudgeXy55pQ",
}


def snapshot(*roots):
    files = {}
    for root in roots:
        for path in Path(root).rglob("*"):
            if path.is_file():
                stat = path.stat()
                files[path] = (stat.st_mtime_ns, stat.st_size)
    return files


def test_a_run_writes_only_in_its_directory_and_never_a_secret(base_model, alpaca_file, tmp_path):
    """A CLI run with fake secrets in the environment and home, caches, temp and working directories of its own:
    every file created or changed anywhere it could reach is inside the run directory, and no file, log line or
    output holds any of the secrets."""
    dirs = {name: tmp_path / name for name in ("home", "cache", "tmp", "cwd")}
    for folder in dirs.values():
        folder.mkdir()
    out = tmp_path / "run"
    config_file = dirs["cwd"] / "config.yaml"
    config_file.write_text(
        yaml.safe_dump(tiny_config(base_model, alpaca_file, out, training__max_steps=2).to_dict())
    )
    roots = (tmp_path, base_model, alpaca_file.parent)
    before = snapshot(*roots)
    env = {
        **os.environ,
        **SECRETS,
        "HOME": str(dirs["home"]),
        "HF_HOME": str(dirs["cache"] / "hf"),
        "XDG_CACHE_HOME": str(dirs["cache"]),
        "TMPDIR": str(dirs["tmp"]),
        "PYTHONDONTWRITEBYTECODE": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO_ROOT / "src"),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "symnoise", "train", str(config_file)],
        env=env,
        cwd=dirs["cwd"],
        capture_output=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = snapshot(*roots)
    written = {path for path, stamp in after.items() if before.get(path) != stamp}
    outside = sorted(str(p) for p in written if not p.is_relative_to(out))
    assert outside == []
    assert {"model.safetensors", "config.yaml", "metrics.jsonl"} <= {p.name for p in written}
    print(f"\nthe run wrote {len(written)} files, all under its run directory")
    for secret in SECRETS.values():
        assert secret.encode() not in proc.stdout + proc.stderr
        for path in written:
            assert secret.encode() not in path.read_bytes(), path
