"""Counting, on the CPU, the calls that would make the host wait for a GPU during `symnoise train`'s steps.

On CUDA, reading a device tensor on the host (``.item()``, ``.tolist()``, ``bool()``/``float()``/``int()`` of a
tensor, ``.cpu()``, ``.numpy()``, ``.nonzero()``) blocks until the GPU has run everything queued before it: a host
sync. On the CPU nothing waits, so `SyncCounter` counts those calls instead, each with the step it belongs to and
the function that made it (the first caller outside torch's own tensor code). A step's ``"step"`` window runs
from the moment the trainer fetches the step's micro-batches (``get_batch_samples``) to the end of its
``on_step_end`` callbacks; its ``"log"`` window is what follows, Trainer's logging, saving and evaluation
(``_maybe_log_save_evaluate``).

Left out, because they touch host memory only, also on a GPU machine: the data loader producing a batch (its
collator runs on CPU tensors before accelerate moves the batch), and AdamW reading its step counter, a CPU tensor
unless the optimizer is ``capturable`` or ``fused`` (``torch.optim.optimizer._get_value``).

Blocking host-to-device copies (``torch.tensor(..., device="cuda")``, ``.to("cuda")`` of a CPU tensor) also
synchronize on CUDA, but are no-ops on the CPU and are not counted here.
"""

from __future__ import annotations

import collections
import os
import sys
from typing import Any

import torch

READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy", "nonzero")
_TORCH_DIR = os.path.dirname(torch.__file__)
_HOST_ONLY = (os.path.join(_TORCH_DIR, "optim", ""),)  # AdamW's CPU step counter (see above)
_SKIPPED_FRAMES = (os.path.join(_TORCH_DIR, "_tensor.py"), __file__)


class SyncCounter:
    """Patches the tensor reads in `READS` and ``RecipeTrainer``'s step boundaries; ``calls`` lists
    ``(step, window, read, "package/module.py:function")`` for every read inside a window."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, str, str, str]] = []
        self.step: int | None = None  # the step whose window is open
        self.window = "step"
        self.paused = 0
        self._undo: list[tuple[Any, str, Any]] = []

    # ------------------------------------------------------------------ installing
    def install(self) -> SyncCounter:
        from torch.utils.data.dataloader import _BaseDataLoaderIter

        from symnoise.train.trainer import RecipeTrainer

        for name in READS:
            self._patch(torch.Tensor, name, self._counted(name, getattr(torch.Tensor, name)))
        for name in ("__init__", "__next__"):
            self._patch(_BaseDataLoaderIter, name, self._paused(getattr(_BaseDataLoaderIter, name)))
        fetch = RecipeTrainer.get_batch_samples
        close = RecipeTrainer._maybe_log_save_evaluate

        def get_batch_samples(trainer: Any, *args: Any, **kwargs: Any) -> Any:
            self.step, self.window = trainer.state.global_step + 1, "step"
            return fetch(trainer, *args, **kwargs)

        def maybe_log_save_evaluate(trainer: Any, *args: Any, **kwargs: Any) -> Any:
            self.step, self.window = trainer.state.global_step, "log"
            try:
                return close(trainer, *args, **kwargs)
            finally:
                self.step = None

        self._patch(RecipeTrainer, "get_batch_samples", get_batch_samples)
        self._patch(RecipeTrainer, "_maybe_log_save_evaluate", maybe_log_save_evaluate)
        return self

    def uninstall(self) -> None:
        for owner, name, original in reversed(self._undo):
            if original is None:
                delattr(owner, name)
            else:
                setattr(owner, name, original)
        self._undo.clear()
        self.step = None

    def __enter__(self) -> SyncCounter:
        return self.install()

    def __exit__(self, *exc: Any) -> None:
        self.uninstall()

    def _patch(self, owner: Any, name: str, value: Any) -> None:
        self._undo.append((owner, name, owner.__dict__.get(name)))
        setattr(owner, name, value)

    def _counted(self, name: str, original: Any) -> Any:
        def read(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if self.step is not None and not self.paused:
                where = _caller(sys._getframe(1))
                if where is not None:
                    self.calls.append((self.step, self.window, name, where))
            return original(tensor, *args, **kwargs)

        return read

    def _paused(self, original: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            self.paused += 1
            try:
                return original(*args, **kwargs)
            finally:
                self.paused -= 1

        return call

    # ------------------------------------------------------------------ reading the counts
    def per_step(self, window: str = "step") -> dict[int, collections.Counter]:
        """For each step with reads in its ``window``: how many of each ``(read, where)``."""
        steps: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
        for step, in_window, name, where in self.calls:
            if in_window == window:
                steps[step][(name, where)] += 1
        return dict(steps)


def _caller(frame: Any) -> str | None:
    """``package/module.py:function`` of the first frame outside torch's tensor code and this file; None for a
    read that touches host memory only (`_HOST_ONLY`)."""
    while frame is not None and frame.f_code.co_filename in _SKIPPED_FRAMES:
        frame = frame.f_back
    if frame is None:
        return None
    path = frame.f_code.co_filename
    if path.startswith(_HOST_ONLY):
        return None
    parts = path.replace(os.sep, "/").split("/")
    return f"{'/'.join(parts[-2:])}:{frame.f_code.co_name}"
