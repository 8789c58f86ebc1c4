"""The training loop reads the device once per optimizer step: `symnoise train` on a tiny model, with the reads
that would make the host wait for a GPU counted on the CPU (tests/sync_counter.py says what is counted).

Every step here has 2 micro-batches, and SymNoise runs each example twice (a doubled batch, or two passes), so a
read per micro-batch or per pass shows as 2 or 4 per step. What each step may read:

* the non-finite guard's one read, which also carries the preemption flag (`NonFiniteGuard`);
* nothing of Trainer's: its only read per micro-batch, ``logging_nan_inf_filter``, is turned off by the recipe;
* the model's attention-mask preparation (transformers' ``masking_utils``), once per forward, that no setting of
  the recipe or Trainer turns off: with SDPA and padded rows it checks whether the rows have padding
  (``_ignore_causal_mask_sdpa``, one or two reads), with packed rows whether a row holds several sequences
  (``find_packed_sequence_indices``, one read). Eager attention reads nothing.

A logged step adds four reads, after the step: Trainer's loss and gradient norm, the recipe's real-token count
and the noise norm.
"""

from __future__ import annotations

import collections
import json
import math

import pytest
from sync_counter import SyncCounter
from test_train import tiny_config

from symnoise.train import train

GUARD = ("tolist", "train/reliability.py:on_pre_optimizer_step")
STEPS = 3
MICRO_BATCHES = 2
# The model's own reads (transformers' attention-mask preparation): where, and how many per forward.
MASK_READS = {
    "padded-sdpa": ("transformers/masking_utils.py:_ignore_causal_mask_sdpa", (1, 2)),
    "packed-sdpa": ("transformers/masking_utils.py:find_packed_sequence_indices", (1, 1)),
}
LOGGED_STEP = collections.Counter(
    {
        ("item", "transformers/trainer.py:_maybe_log_save_evaluate"): 2,  # Trainer: loss, gradient norm
        ("__int__", "train/metrics.py:extend"): 1,  # real tokens, summed on the device over the steps
        ("__float__", "symnoise/hf.py:_log"): 1,  # noise norm of the last draw, computed when read
    }
)


def counted_run(base_model, alpaca_file, out, **overrides):
    settings = {
        "training__max_steps": STEPS,
        "training__per_device_batch_size": 2,
        "training__effective_batch_size": 2 * MICRO_BATCHES,
        "training__logging_steps": STEPS + 1,
        "training__save_steps": STEPS + 1,
        "training__report_to": [],
    }
    config = tiny_config(base_model, alpaca_file, out, **{**settings, **overrides})
    with SyncCounter() as counter:
        result = train(config)
    assert result.steps == STEPS
    return counter


@pytest.mark.parametrize(
    "execution,attention,packing,mask_reads",
    [
        ("concat", "eager", "none", None),
        ("paired", "eager", "none", None),
        ("concat", "sdpa", "none", "padded-sdpa"),
        ("paired", "sdpa", "padding_free", "packed-sdpa"),
    ],
)
def test_a_training_step_reads_the_device_once(
    base_model, alpaca_file, tmp_path, execution, attention, packing, mask_reads
):
    counter = counted_run(
        base_model,
        alpaca_file,
        tmp_path / "run",
        noise__execution=execution,
        model__attn_implementation=attention,
        data__packing=packing,
    )
    steps = counter.per_step()
    assert sorted(steps) == list(range(1, STEPS + 1))
    forwards = MICRO_BATCHES * (2 if execution == "paired" else 1)
    for step, reads in steps.items():
        model_reads = collections.Counter()
        if mask_reads is not None:
            where, (low, high) = MASK_READS[mask_reads]
            model_reads = collections.Counter({key: n for key, n in reads.items() if key[1] == where})
            assert low * forwards <= sum(model_reads.values()) <= high * forwards, (step, dict(reads))
        assert reads - model_reads == collections.Counter({GUARD: 1}), (step, dict(reads))


def test_a_logged_step_reads_the_device_four_times_after_the_step(base_model, alpaca_file, tmp_path):
    """logging_steps 1: the step itself still reads once; the log that follows reads what it writes."""
    out = tmp_path / "run"
    counter = counted_run(
        base_model, alpaca_file, out, model__attn_implementation="eager", training__logging_steps=1
    )
    assert counter.per_step() == {step: collections.Counter({GUARD: 1}) for step in range(1, STEPS + 1)}
    logged = counter.per_step("log")
    # The last step's window also holds the end-of-training checkpoint, which reads nothing on the CPU.
    assert logged == {step: LOGGED_STEP for step in range(1, STEPS + 1)}
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if "loss" in line] == [1, 2, 3]
    assert all(math.isfinite(line["loss"]) and line["tokens_per_s"] > 0 for line in lines if "loss" in line)


def test_training_arguments_leave_the_host_checks_out_unless_asked(base_model, alpaca_file, tmp_path):
    """Trainer's NaN filter of the logged loss is off and batches move to the GPU without blocking; both stay
    the user's to set through trainer_args."""
    from symnoise.train.recipe import training_arguments

    config = tiny_config(base_model, alpaca_file, tmp_path / "run")
    args = training_arguments(config, tmp_path / "run", "fp32", has_eval=False)
    assert args.logging_nan_inf_filter is False
    assert args.accelerator_config.non_blocking is True
    config = tiny_config(
        base_model,
        alpaca_file,
        tmp_path / "run",
        training__trainer_args={
            "logging_nan_inf_filter": True,
            "accelerator_config": {"non_blocking": False},
        },
    )
    args = training_arguments(config, tmp_path / "run", "fp32", has_eval=False)
    assert args.logging_nan_inf_filter is True
    assert args.accelerator_config.non_blocking is False
