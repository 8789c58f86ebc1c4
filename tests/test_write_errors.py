"""Every failure while writing a checkpoint or the final model becomes `CheckpointWriteError`: the writers' own
exception classes injected (SafetensorError, torch.save's RuntimeError), and a real full file system (a tmpfs
shrunk to what it already holds, so the kernel answers ENOSPC in the middle of a save)."""

import os
import shutil
import subprocess

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from test_reliability import CHECKPOINT_FILES
from test_train import tiny_config
from transformers import Trainer

from symnoise.train import train
from symnoise.train.reliability import CheckpointWriteError

INTACT = "the last complete checkpoint, checkpoint-2, is intact: fix this and rerun with --resume"
TORCH_FULL = (
    "[enforce fail at inline_container.cc:664] . unexpected pos 1024 vs 0\n"
    "PytorchStreamWriter failed writing file data/0: file write failed"
)
SAFETENSORS_FULL = (
    'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
)


def leftovers(out):
    return sorted(p.name for p in out.glob("tmp-*"))


@pytest.mark.parametrize(
    "where,error",
    [
        ("model", SafetensorError(SAFETENSORS_FULL)),
        ("optimizer", RuntimeError(TORCH_FULL)),
    ],
)
def test_checkpoint_writer_exception_becomes_checkpoint_write_error(
    base_model, alpaca_file, tmp_path, monkeypatch, where, error
):
    out = tmp_path / "run"
    config = tiny_config(base_model, alpaca_file, out, training__save_total_limit=1)
    method = {"model": "_save", "optimizer": "_save_optimizer_and_scheduler"}[where]
    original = getattr(Trainer, method)

    def fail_at_step_4(self, output_dir=None, *args, **kwargs):
        if self.state.global_step == 4 and "tmp-checkpoint-4" in str(output_dir):
            raise error
        return original(self, output_dir, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, method, fail_at_step_4)
        with pytest.raises(CheckpointWriteError) as raised:
            train(config)
    reason = " ".join(str(error).split())
    assert str(raised.value) == (
        f"could not write checkpoint-4 in {out} ({type(error).__name__}: {reason}); {INTACT}"
    )
    assert raised.value.__cause__ is error
    assert leftovers(out) == [] and sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    assert CHECKPOINT_FILES <= {p.name for p in (out / "checkpoint-2").iterdir()}
    assert train(config, resume=True).steps == 4


def test_final_model_writer_exception_becomes_checkpoint_write_error(
    base_model, alpaca_file, tmp_path, monkeypatch
):
    out = tmp_path / "run"
    config = tiny_config(base_model, alpaca_file, out)
    original = Trainer.save_model

    def fail_after_half(self, output_dir=None, *args, **kwargs):
        if str(output_dir).endswith("tmp-final"):
            original(self, output_dir, *args, **kwargs)
            raise SafetensorError(SAFETENSORS_FULL)
        return original(self, output_dir, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "save_model", fail_after_half)
        with pytest.raises(CheckpointWriteError) as raised:
            train(config)
    assert str(raised.value) == (
        f"could not write the final model in {out} (SafetensorError: {SAFETENSORS_FULL}); "
        "the last complete checkpoint, checkpoint-4, is intact: fix this and rerun with "
        "--resume"
    )
    assert leftovers(out) == [] and not (out / "model.safetensors").exists()


# ------------------------------------------------------------------------------------------ a real full disk
@pytest.fixture
def small_tmpfs(tmp_path):
    """A 64 MiB tmpfs (root only) and a function that shrinks it to what it holds plus ``spare`` bytes."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if made.returncode != 0:
        pytest.skip(f"a tmpfs cannot be mounted here (needs root): {made.stderr.strip()}")

    def fill(spare=8192):
        used = shutil.disk_usage(mount).used
        size_kib = (used + spare) // 1024 + 1
        subprocess.run(["mount", "-o", f"remount,size={size_kib}k", str(mount)], check=True)
        return shutil.disk_usage(mount).free

    def grow():
        subprocess.run(["mount", "-o", "remount,size=64m", str(mount)], check=True)

    fill.grow = grow
    yield mount, fill
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow
def test_real_full_disk_during_a_checkpoint_and_the_final_save(
    base_model, alpaca_file, small_tmpfs, monkeypatch
):
    """The file system is shrunk to full just before checkpoint-4's optimizer state is written, then (after it
    is grown back and the run resumed) just before the final model: both saves fail with the kernel's ENOSPC in
    the writers' own exception classes, each becomes `CheckpointWriteError`, nothing staged is left behind, and
    the resumed run ends with the same weights as checkpoint-4."""
    mount, fill = small_tmpfs
    out = mount / "run"
    config = tiny_config(base_model, alpaca_file, out, training__save_total_limit=2)
    seen = {}
    save_optimizer, save_model = Trainer._save_optimizer_and_scheduler, Trainer.save_model

    def full_before_optimizer(self, output_dir, *args, **kwargs):
        if self.state.global_step == 4:
            seen["free at checkpoint-4"] = fill()
        return save_optimizer(self, output_dir, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "_save_optimizer_and_scheduler", full_before_optimizer)
        with pytest.raises(CheckpointWriteError) as raised:
            train(config)
    message = str(raised.value)
    assert message.startswith(f"could not write checkpoint-4 in {out} (") and message.endswith(INTACT)
    seen["checkpoint error"] = f"{type(raised.value.__cause__).__name__}: {raised.value.__cause__}"
    assert leftovers(out) == [] and sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    fill.grow()

    def full_before_final(self, output_dir=None, *args, **kwargs):
        if str(output_dir).endswith("tmp-final"):
            seen["free at the final save"] = fill(spare=4096)
        return save_model(self, output_dir, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "save_model", full_before_final)
        with pytest.raises(CheckpointWriteError) as raised:
            train(config, resume=True)
    seen["final error"] = f"{type(raised.value.__cause__).__name__}: {raised.value.__cause__}"
    assert str(raised.value).startswith(f"could not write the final model in {out} (")
    assert "checkpoint-4, is intact" in str(raised.value)
    assert leftovers(out) == [] and not (out / "model.safetensors").exists()
    fill.grow()
    assert train(config, resume=True).steps == 4
    final, last = load_file(out / "model.safetensors"), load_file(out / "checkpoint-4" / "model.safetensors")
    assert final.keys() == last.keys() and all(torch.equal(final[k], last[k]) for k in final)
    print("\n" + "\n".join(f"{k}: {' '.join(str(v).split())[:200]}" for k, v in seen.items()))
    assert os.path.ismount(mount)
