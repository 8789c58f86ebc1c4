"""The block `symnoise train` prints once when training starts: what is trained and how much of it.

    training: 4 optimizer steps (training.max_steps) on 18 examples
      parameters: 8,192 trainable of 62,720 (13.06%)
      effective batch: 8 examples per step = 4 per device x 2 accumulation steps x 1 process
      tokens per step: 514 on average (mean example 64.3 tokens x 8); at most 768 (max_length 96 x 8)

The numbers are the Trainer's own (its optimizer steps and batch), the model's parameters counted before any
wrapper shards them, and the tokenised training data's lengths; the main process prints them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from transformers import TrainerCallback

from .metrics import logical_numel

logger = logging.getLogger("symnoise.train")


def parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameters of a model, each shared tensor once, 4-bit and ZeRO-3 partitioned
    weights at their full size (`metrics.logical_numel`)."""
    trainable = total = 0
    for param in model.parameters():
        count = logical_numel(param)
        total += count
        trainable += count if param.requires_grad else 0
    return trainable, total


def summary_lines(
    *,
    steps: int,
    epochs: float | None,
    examples: int,
    trainable: int,
    total: int,
    per_device: int,
    accumulation: int,
    processes: int,
    lengths: Sequence[int] | None,
    max_length: int | None,
    resumed_at: int = 0,
) -> list[str]:
    """The start-of-training block. ``epochs`` None: the run is bounded by ``training.max_steps``; ``lengths``:
    each training example's tokens (None when not known: then the most a step can hold is all that is said)."""
    batch = per_device * accumulation * processes
    bound = "training.max_steps" if epochs is None else f"{epochs:g} epochs"
    share = f"{100 * trainable / total:.2f}%" if total else "n/a"
    lines = [
        f"training: {steps:,} optimizer steps ({bound}) on {examples:,} examples"
        + (f", resuming after step {resumed_at:,}" if resumed_at else ""),
        f"  parameters: {trainable:,} trainable of {total:,} ({share})",
        f"  effective batch: {batch:,} examples per step = {per_device} per device x {accumulation} accumulation "
        f"steps x {processes} process{'es' if processes != 1 else ''}",
    ]
    most = f"{max_length * batch:,} (max_length {max_length} x {batch})" if max_length else None
    if lengths:
        mean = sum(lengths) / len(lengths)
        lines.append(
            f"  tokens per step: {round(mean * batch):,} on average (mean example {mean:.1f} tokens x {batch})"
            + (f"; at most {most}" if most else "")
        )
    elif most:
        lines.append(f"  tokens per step: at most {most}; the examples' lengths are not known")
    return lines


class StartSummary(TrainerCallback):
    """Logs `summary_lines` once, on the main process, when the Trainer starts training (its step count and
    batch are final then). Built with the model before the Trainer wraps it, so sharding does not change the
    counts."""

    def __init__(self, model: torch.nn.Module, dataset: Any):
        self.trainable, self.total = parameter_counts(model)
        self.dataset = dataset

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        lengths = getattr(self.dataset, "lengths", None)
        for line in summary_lines(
            steps=state.max_steps,
            epochs=None if args.max_steps > 0 else args.num_train_epochs,
            examples=len(self.dataset),
            trainable=self.trainable,
            total=self.total,
            per_device=args.per_device_train_batch_size,
            accumulation=args.gradient_accumulation_steps,
            processes=args.world_size,
            lengths=lengths,
            max_length=getattr(self.dataset, "max_length", None),
            resumed_at=state.global_step,
        ):
            logger.info("%s", line)
