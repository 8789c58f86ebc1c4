"""What makes a training run survive crashes and bad numbers: atomic checkpoints, a resume point that is
always complete, a guard against non-finite losses and gradients, and a free-space check before training.

* Checkpoints are staged in ``RUN/tmp-checkpoint-N/`` and renamed (`publish`) to ``RUN/checkpoint-N`` only once
  every file (model, optimizer, scheduler, RNG and noise states, trainer state) is written and synced (by
  `symnoise.train.trainer.RecipeTrainer`). A save cut short by a crash, a kill or a full disk never leaves a
  directory named ``checkpoint-N``, and older checkpoints are rotated away only after the new one is in place.
* `last_complete_checkpoint` and `discard_incomplete` are what ``--resume`` uses to pick where to continue.
* `NonFiniteGuard` checks every optimizer step's losses and gradients before the optimizer sees them, and
  either stops the run (the weights stay those of the last finite step) or skips the step; either way the
  step, its example indices and their sources are reported and appended to ``RUN/nonfinite_steps.jsonl``.
* `check_free_space` refuses to start when the disk cannot hold one checkpoint and the final model.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..files import append_json_lines, fsync_dir, fsync_tree, publish_dir, write_text_atomic
from ..layout import NONFINITE_LOG
from .config import ConfigError

logger = logging.getLogger("symnoise.train")

STAGING_PREFIX = "tmp-"
INDEX_KEY = "symnoise_example_index"
_CHECKPOINT = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
_COMPLETE_MARKER = "trainer_state.json"  # the last file transformers writes into a checkpoint


class TrainingError(RuntimeError):
    """Training stopped for a reason the user must act on; the message says what happened and what to do."""


class NonFiniteError(TrainingError):
    """A step produced a NaN or infinite loss or gradient and ``training.on_nonfinite`` is ``stop``."""


class CheckpointWriteError(TrainingError):
    """A checkpoint or the final model could not be written (disk full, permissions); earlier ones are intact."""


# ------------------------------------------------------------------------------------------ checkpoints
def checkpoint_step(path: Path) -> int | None:
    match = _CHECKPOINT.match(path.name)
    return int(match.group(1)) if match else None


def last_complete_checkpoint(run_dir: Path) -> Path | None:
    """The highest-numbered ``checkpoint-N`` directory holding a trainer state, or None.

    Staged checkpoints (``tmp-checkpoint-N``) never count; a ``checkpoint-N`` without ``trainer_state.json`` (left
    by a version that wrote in place) is passed over with a warning.
    """
    found = []
    for path in Path(run_dir).iterdir() if Path(run_dir).is_dir() else ():
        step = checkpoint_step(path)
        if step is None or not path.is_dir():
            continue
        if (path / _COMPLETE_MARKER).is_file():
            found.append((step, path))
        else:
            logger.warning("ignoring %s: it has no %s, so its save did not finish", path, _COMPLETE_MARKER)
    return max(found)[1] if found else None


def discard_incomplete(run_dir: Path) -> list[Path]:
    """Remove checkpoints whose save was interrupted (``tmp-checkpoint-*``, ``tmp-final``); returns them."""
    removed = []
    for path in sorted(Path(run_dir).glob(f"{STAGING_PREFIX}*")):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
            logger.info("removed %s, left by an interrupted save", path)
    return removed


def publish(staged: Path, final: Path) -> None:
    """Rename a fully written directory to its final name, replacing an older one of the same name (set aside
    under a staging name, which `discard_incomplete` removes if a kill leaves it)."""
    publish_dir(staged, final, aside=final.with_name(f"{STAGING_PREFIX}old-{final.name}"))


def describe_write_error(error: BaseException, what: str, run_dir: Path) -> str:
    """A message saying what could not be written, why, and which checkpoint is still good.

    Writers report a full disk in their own ways: ``OSError(ENOSPC)`` from Python, ``SafetensorError`` from
    safetensors, ``RuntimeError: [enforce fail at inline_container.cc] ... file write failed`` from
    ``torch.save``; any of them is named by its class and text when it is not an ``OSError``.
    """
    if isinstance(error, OSError):
        reason = "no space left on device" if error.errno == errno.ENOSPC else (error.strerror or str(error))
    else:
        text = " ".join(str(error).split())
        reason = f"{type(error).__name__}: {text[:300]}" if text else type(error).__name__
    last = last_complete_checkpoint(run_dir)
    intact = (
        f"the last complete checkpoint, {last.name}, is intact: fix this and rerun with --resume"
        if last
        else "no earlier checkpoint exists"
    )
    return f"could not write {what} in {run_dir} ({reason}); {intact}"


# ------------------------------------------------------------------------------------------ free space
def estimate_checkpoint_bytes(model: torch.nn.Module, lora: bool) -> tuple[int, int]:
    """(checkpoint, final model) sizes in bytes: saved weights, plus AdamW's two moments of each trainable
    parameter in the checkpoint. A LoRA run saves only the adapter."""
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    weights = trainable if lora else sum(p.numel() * p.element_size() for p in model.parameters())
    return weights + 2 * trainable, weights


def check_free_space(run_dir: Path, model: torch.nn.Module, lora: bool, checkpoints_kept: int) -> None:
    """Refuse to start when ``run_dir``'s disk cannot hold one checkpoint and the final model."""
    checkpoint, final = estimate_checkpoint_bytes(model, lora)
    free = shutil.disk_usage(run_dir).free
    needed = checkpoint + final
    if free < needed:
        raise ConfigError(
            f"training.output_dir: {run_dir} has {_gib(free)} free, but one checkpoint (weights and optimizer "
            f"state, about {_gib(checkpoint)}) and the final model ({_gib(final)}) need about {_gib(needed)}; "
            "free some space or choose another output_dir"
        )
    whole_run = checkpoint * (checkpoints_kept + 1) + final
    if free < whole_run:
        logger.warning(
            "%s has %s free; keeping %d checkpoints and the final model may need about %s",
            run_dir,
            _gib(free),
            checkpoints_kept,
            _gib(whole_run),
        )


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


# ------------------------------------------------------------------------------------------ non-finite steps
class IndexedDataset(torch.utils.data.Dataset):
    """A map-style dataset whose items also carry their index, so a bad step can name its examples."""

    def __init__(self, dataset: Sequence):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return {**self.dataset[index], INDEX_KEY: index}

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # not set yet (unpickling in a data-loader worker)
            raise AttributeError(name)
        return getattr(self.dataset, name)


def indexing_collator(collator: Any) -> Any:
    """Wrap a collator so that batches built from `IndexedDataset` items carry their example indices, as a list of
    Python ints: accelerate moves a batch's tensors to the device and leaves other values alone, so the indices
    stay on the host and reading them costs no device-to-host copy (a host sync on a GPU)."""

    def collate(features: list[dict]) -> dict:
        indices = [int(feature.pop(INDEX_KEY)) for feature in features if INDEX_KEY in feature]
        batch = collator(features)
        if indices:
            batch[INDEX_KEY] = indices
        return batch

    return collate


class NonFiniteGuard(TrainerCallback):
    """Checks each optimizer step for NaN or infinite losses and gradients before the optimizer step.

    The trainer hands it the example indices of each step's micro-batches (`take_indices`, which removes them from
    the batches before the model sees them), the loss of each micro-batch (`record`) and the step's total gradient
    norm, the one Trainer computes for clipping and logging (`note_grad_norm`). At ``on_pre_optimizer_step``
    (after gradient clipping, before ``optimizer.step()``) it checks those losses and that norm. ``stop`` raises
    `NonFiniteError`, so no NaN reaches the weights or a checkpoint; ``skip`` drops the step's gradients, so the
    optimizer leaves the weights as they were, and training goes on. Under DDP and FSDP every rank takes the same
    decision.

    The check is the training loop's one host sync per optimizer step: the losses and the norm stay on the
    device, and one small tensor is read, ``[non-finite, stop asked]``, all-reduced (MAX) first when there are
    several processes. Its second entry carries ``stop_asked()`` (the preemption notice of this process), so every
    rank learns whether any rank was asked to stop without a second collective and a second sync; the agreed
    answer is left in ``stop_agreed``. `symnoise.train.trainer.RecipeTrainer` feeds the guard and adds it as a
    callback.
    """

    def __init__(
        self,
        trainer: Any,
        mode: str,
        sources: Sequence[str],
        run_dir: Path,
        stop_asked: Callable[[], bool] = lambda: False,
    ):
        if mode not in ("stop", "skip"):
            raise ValueError(f"on_nonfinite must be stop or skip; got {mode!r}")
        self.trainer = trainer
        self.mode = mode
        self.sources = list(sources)
        self.log_path = Path(run_dir) / NONFINITE_LOG
        self.stop_asked = stop_asked
        self.stop_agreed = False
        self.indices: list[int] = []
        self.losses: list[torch.Tensor] = []
        self.grad_norm: Any = None
        self.skipped = 0

    def take_indices(self, batches: Sequence[dict]) -> None:
        """Keep the example indices of one optimizer step's micro-batches (host ints, see `indexing_collator`),
        removing them from the batches."""
        self.indices = [int(i) for batch in batches for i in batch.pop(INDEX_KEY, ())]

    def record(self, loss: torch.Tensor, same_micro_batch: bool = False) -> None:
        """Keep one micro-batch's loss; ``same_micro_batch``: a later pass of the same micro-batch (the second
        pass of a SymNoise pair), added to the loss kept last, as the trainer adds it."""
        if same_micro_batch and self.losses:
            self.losses[-1] = self.losses[-1] + loss.detach()
        else:
            self.losses.append(loss.detach())

    def note_grad_norm(self, grad_norm: Any) -> None:
        """The step's total gradient norm as Trainer computed it (before clipping): a device tensor, except under
        DeepSpeed, where Trainer reads the engine's norm after the engine has already stepped (a float)."""
        self.grad_norm = grad_norm

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        losses, self.losses = self.losses, []
        device = args.device
        grad_norm = self._step_grad_norm(device)
        loss_values = (
            torch.stack([loss.float().reshape(()) for loss in losses])
            if losses
            else torch.zeros((), device=device)
        )
        finite = (torch.isfinite(loss_values).all() & torch.isfinite(grad_norm)).to(device)
        flags = torch.stack(
            [(~finite).to(torch.float32), torch.full((), float(self.stop_asked()), device=device)]
        )
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        bad, asked = flags.tolist()  # the one host sync of the step
        self.stop_agreed = asked > 0
        if not bad:
            return
        report = {
            "step": state.global_step + 1,
            "action": self.mode,
            "losses": [_num(x) for x in loss_values.flatten()],
            "grad_norm": _num(grad_norm),
            "example_indices": self.indices,
            "sources": [self.sources[i] for i in self.indices if 0 <= i < len(self.sources)],
        }
        if self.trainer.is_world_process_zero():
            append_json_lines(self.log_path, [report])
        where = (
            f"step {report['step']} (losses {report['losses']}, gradient norm {report['grad_norm']}; "
            f"examples {self.indices}: {', '.join(report['sources'][:8])}"
            f"{' ...' if len(report['sources']) > 8 else ''})"
        )
        if self.mode == "stop":
            raise NonFiniteError(
                f"non-finite loss or gradient at {where}. Training stopped before the optimizer step, so no NaN "
                f"reached the weights; the step is recorded in {self.log_path}. Lower training.learning_rate, "
                "check those examples, or set training.on_nonfinite=skip to drop such steps"
            )
        self.trainer.model.zero_grad(set_to_none=True)
        self.skipped += 1
        logger.warning("skipped %s: non-finite loss or gradient (training.on_nonfinite=skip)", where)

    def _step_grad_norm(self, device: torch.device) -> torch.Tensor:
        """This step's gradient norm as a device tensor: Trainer's (`note_grad_norm`) when it is one, else one
        pass over the gradients. The latter happens under DeepSpeed, whose engine holds the gradients (no
        parameter has a ``.grad`` there, so only the losses are checked), and with a Trainer that does not hand
        its norm over."""
        norm, self.grad_norm = self.grad_norm, None
        if not isinstance(norm, torch.Tensor):
            grads = [p.grad for p in self.trainer.model.parameters() if p.grad is not None]
            if not grads:
                return torch.zeros((), device=device)
            norm = torch.nn.utils.get_total_norm(grads)
        if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor norm over sharded gradients; every rank is here
            norm = norm.full_tensor()
        return norm.float().reshape(()).to(device)


def _num(value: torch.Tensor) -> float | str:
    number = float(value)
    return number if math.isfinite(number) else str(number)


# ------------------------------------------------------------------------------------------ resume
def truncate_log(path: Path, last_step: int) -> int:
    """Drop the lines of a JSONL log (metrics.jsonl) past ``last_step`` and any torn last line; returns how many.

    A resumed run repeats the steps between its checkpoint and the crash, and would log them a second time.
    """
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            dropped += 1
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] > last_step:
            dropped += 1
        else:
            kept.append(line)
    write_text_atomic(path, "".join(line + "\n" for line in kept))
    return dropped


def publish_files(staged: Path, run_dir: Path, last: Sequence[str] = ()) -> None:
    """Move every file of ``staged`` into ``run_dir`` (names in ``last`` at the end), then remove ``staged``."""
    fsync_tree(staged)
    present = os.listdir(staged)
    for name in [n for n in present if n not in last] + [n for n in last if n in present]:
        os.replace(staged / name, run_dir / name)
    fsync_dir(run_dir)
    staged.rmdir()
