"""The plain training loop that trains a small model from scratch before any noise is involved.

Two places need one: the quickstart warm-starts its tiny model on task text before the methods fine-tune it, and
a grid's ``pretrain`` section trains the grid's only model from scratch. Both want the same loop: AdamW at a
learning rate set for each step, gradients clipped at norm 1, the loss of every step kept on the model's device
and read once at the end (a GPU is not made to wait at every step), and a progress line every ``log_every``
steps. What differs between them (where the batches come from, the optimizer's settings, the schedule) is the
caller's, passed in as a `WarmStartPlan` and an iterator of batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class WarmStartPlan:
    """How long and how to train: ``learning_rate(step)`` is the rate of each step (0-based)."""

    steps: int
    learning_rate: Callable[[int], float]
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    log_every: int = 100


def warm_start(
    model: torch.nn.Module,
    batches: Iterator[dict[str, torch.Tensor]],
    plan: WarmStartPlan,
    log: Callable[[str], None],
) -> list[float]:
    """Train ``model`` for ``plan.steps`` steps, one batch of ``batches`` each, and return the loss of every step.

    The batches are model keyword arguments with ``labels`` (built on the CPU, the same on any device) and are
    moved to the model's device. The first and last steps and every ``plan.log_every``-th are logged.
    """
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=plan.learning_rate(0), betas=plan.betas, weight_decay=plan.weight_decay
    )
    model.train()
    losses = []
    for step in range(plan.steps):
        for group in optimizer.param_groups:
            group["lr"] = plan.learning_rate(step)
        batch = {name: tensor.to(device) for name, tensor in next(batches).items()}
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())
        if step % plan.log_every == 0 or step == plan.steps - 1:
            log(f"warm-start step {step + 1}/{plan.steps}: loss {loss.item():.3f}")
    return torch.stack(losses).tolist()
