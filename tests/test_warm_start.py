"""The one from-scratch training loop (`symnoise.warm_start`) behind the quickstart's warm start and the grid's
pretraining: each step's learning rate is the plan's, each step's loss is returned, and the log says where it is."""

from __future__ import annotations

import itertools
import math

import torch

from symnoise import quickstart
from symnoise.grid.pretrain import learning_rate as grid_learning_rate
from symnoise.grid.sections import PretrainSection
from symnoise.synthetic import tiny_llama
from symnoise.warm_start import WarmStartPlan, warm_start


def batches(vocab: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    while True:
        ids = torch.randint(vocab, (2, 12), generator=generator)
        yield {"input_ids": ids, "labels": ids}


def test_every_step_runs_at_the_plan_s_rate_and_returns_its_loss(monkeypatch):
    model = tiny_llama(64, 0, hidden_size=16, layers=1, heads=2)
    rates, lines = [], []
    real_step = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        rates.append(self.param_groups[0]["lr"])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    plan = WarmStartPlan(steps=7, learning_rate=lambda s: 0.01 * (s + 1), log_every=3)
    losses = warm_start(model, batches(64), plan, lines.append)
    assert rates == [0.01 * (s + 1) for s in range(7)]
    assert len(losses) == 7 and all(isinstance(x, float) for x in losses)
    assert [line.split(":")[0] for line in lines] == [
        "warm-start step 1/7",
        "warm-start step 4/7",
        "warm-start step 7/7",
    ]
    assert lines[-1] == f"warm-start step 7/7: loss {losses[-1]:.3f}"


def test_a_zero_rate_leaves_the_weights_and_repeats_the_first_loss_on_the_same_batch():
    model = tiny_llama(64, 0, hidden_size=16, layers=1, heads=2)
    before = [p.detach().clone() for p in model.parameters()]
    same_batch = itertools.repeat(next(batches(64)))
    losses = warm_start(
        model, same_batch, WarmStartPlan(steps=3, learning_rate=lambda s: 0.0), lambda m: None
    )
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert losses[0] == losses[1] == losses[2]


def test_the_callers_schedules():
    settings = quickstart.QuickstartSettings(pretrain_steps=60, pretrain_lr=3e-3)
    rate = quickstart.warm_start_plan(settings).learning_rate
    # linear warmup over steps // 30 = 2 steps, then linear decay to a floor of 5% of the peak
    assert [rate(0), rate(1)] == [3e-3 * 0.5 * 1.0, 3e-3 * 1.0 * (1 - 1 / 60)]
    assert rate(59) == 3e-3 * max(0.05, 1 - 59 / 60)
    section = PretrainSection(fallback="synthetic", steps=100, warmup_steps=10, learning_rate=1e-3)
    assert grid_learning_rate(4, section) == 1e-3 * 5 / 10
    # cosine decay towards 10% of the peak, reached one step after the last
    assert grid_learning_rate(99, section) == 1e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 89 / 90)))
