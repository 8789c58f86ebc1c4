"""`RecipeTrainer`: the transformers ``Trainer`` that `symnoise train` runs, with the recipe's own behaviour.

Every change the recipe makes to transformers' Trainer is an override here, each saying which Trainer behaviour it
changes and why. The noise itself is not: the recipe adds it with `symnoise.hf.add_noise`, the same entry point a
user's own trainer gets, which wraps the instance's methods (see `RecipeTrainer` for the resulting order).
"""

from __future__ import annotations

import shutil
import signal
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainerState
from transformers.trainer import TRAINER_STATE_NAME, TRAINING_ARGS_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from .distributed import deepspeed_checkpoint_state_dict, world_size
from .final import FinishedWeights
from .metrics import RunMetrics, TokenCounter, flop_parameters
from .reliability import (
    STAGING_PREFIX,
    CheckpointWriteError,
    NonFiniteGuard,
    TrainingError,
    describe_write_error,
    publish,
)
from .summary import StartSummary


class RecipeTrainer(Trainer):
    """transformers' ``Trainer`` with the recipe's metrics, non-finite guard and atomic checkpoints.

    Built like a ``Trainer``, plus where the run writes (``run_dir``), what to do with a non-finite step
    (``on_nonfinite``: ``stop`` or ``skip``) and the source of each training example (``sources``, for the report
    of a bad step). It owns a `TokenCounter` (``token_counter``), the `RunMetrics` of the run
    (``run_metrics``) and a `NonFiniteGuard` callback (``nonfinite``); it logs the start-of-training summary
    (`summary.StartSummary`: parameters, examples, steps, batch, tokens per step).

    Order of the wrappers. `symnoise.hf.add_noise`, called on an instance, sets instance attributes that wrap the
    methods below, so they always run outside these overrides:

    * ``log``: add_noise adds ``noise_norm`` and ``noise_alpha`` first; then `log` here adds the throughput,
      memory and MFU keys, Trainer logs the line, and the main process appends it to ``metrics.jsonl``;
    * ``training_step``: with ``execution='paired'`` add_noise runs the step twice, once per pass of the pair,
      so `training_step` here runs once per pass (and the guard adds the passes of one micro-batch into one
      loss, the one the Trainer gets);
    * ``train`` and ``_save_rng_state``: add_noise attaches the noise for ``train()`` and saves each rank's noise
      state beside the RNG states, inside the staged checkpoint that `_save_checkpoint` here publishes.

    ``get_batch_samples``, ``_get_grad_norm``, ``_save_checkpoint`` and ``_get_output_dir`` are changed only
    here.

    A preemption notice (USR1, see `preemption_notice`) makes the run save a checkpoint at the next step boundary
    and stop (`PreemptionStop`, ``preemption``); the recipe then raises `TrainingStopped`.
    """

    _checkpoint_staging: Path | None = None  # set only while _save_checkpoint runs

    def __init__(
        self,
        *args: Any,
        run_dir: str | Path,
        on_nonfinite: str = "stop",
        sources: Sequence[str] = (),
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.run_dir = Path(run_dir)
        self.token_counter = TokenCounter(self)
        n_params, n_trained = flop_parameters(self.model)
        self.run_metrics = RunMetrics(
            self.run_dir, self.token_counter, self.args.device, n_params, world_size(), n_trained
        )
        self.nonfinite = NonFiniteGuard(self, on_nonfinite, sources, self.run_dir, stop_asked=stop_requested)
        self.add_callback(self.nonfinite)
        self.preemption = PreemptionStop(self, self.nonfinite)
        self.add_callback(self.preemption)
        # the parameters are counted now, before the Trainer's wrappers shard them (FSDP)
        self.add_callback(StartSummary(self.model, self.train_dataset))

    # ------------------------------------------------------------------------------------ one optimizer step
    def get_batch_samples(self, *args: Any, **kwargs: Any) -> Any:
        """Trainer fetches one optimizer step's micro-batches here; the recipe also counts their real and total
        tokens (for tokens/s and MFU, in step with the logged steps even when the data loader prefetches), then
        takes out the example indices that `reliability.IndexedDataset` added (for the report of a non-finite
        step), before the model sees the batches."""
        batches, num_items = super().get_batch_samples(*args, **kwargs)
        for batch in batches:
            self.token_counter.add(batch)
        self.nonfinite.take_indices(batches)
        return batches, num_items

    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        """Trainer's forward and backward of one micro-batch; the recipe also keeps its loss, which the
        non-finite guard checks before the optimizer step (a later pass of add_noise's pair is added to its
        micro-batch's first pass).

        Trainer adds the returned loss to the logged mean. Its ``logging_nan_inf_filter`` would replace a NaN or
        infinite loss there by the mean so far, but decides that on the host, a sync after every micro-batch, so
        the recipe turns it off (`symnoise.train.recipe.training_arguments`) and returns the same replacement
        computed on the device instead: a step the guard skips leaves no NaN in the logged losses."""
        loss = super().training_step(*args, **kwargs)
        noise = getattr(self, "_symnoise", None)  # set by symnoise.hf.add_noise
        self.nonfinite.record(loss, same_micro_batch=noise is not None and noise.pass_index > 0)
        logged = getattr(self, "_tr_loss", None)  # Trainer's on-device sum of the losses since the last log
        if not isinstance(logged, torch.Tensor):
            return loss
        mean_so_far = logged / (1 + self.state.global_step - self._globalstep_last_logged)
        return torch.where(torch.isfinite(loss), loss, mean_so_far.to(loss.dtype))

    def _get_grad_norm(self, *args: Any, **kwargs: Any) -> Any:
        """Trainer returns the step's total gradient norm (computed while clipping, or for the log when
        ``max_grad_norm`` is 0); the recipe also hands it to the non-finite guard, which so checks the gradients
        without a second pass over them."""
        grad_norm = super()._get_grad_norm(*args, **kwargs)
        self.nonfinite.note_grad_norm(grad_norm)
        return grad_norm

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> Any:
        """Trainer reports ``logs`` to its callbacks; the recipe first adds throughput, memory and MFU to each
        training line, and after it the main process appends the line (with step and epoch) to the run's
        ``metrics.jsonl``."""
        self.run_metrics.extend(logs)
        result = super().log(logs, *args, **kwargs)
        # A run stopped by a preemption notice leaves out Trainer's end-of-training line: the resumed run writes
        # the one line of the whole run, so metrics.jsonl equals an uninterrupted run's.
        cut_short = self.preemption.stopped_at is not None and "train_runtime" in logs
        if self.is_world_process_zero() and not cut_short:
            self.run_metrics.write(logs, self.state.global_step, self.state.epoch)
        return result

    # ------------------------------------------------------------------------------------ checkpoints
    def _save_checkpoint(self, model: Any, trial: Any = None, *args: Any, **kwargs: Any) -> None:
        """Trainer writes ``checkpoint-N`` in place and rotates old checkpoints before returning, so a kill in the
        middle can leave a half-written ``checkpoint-N`` that ``--resume`` would pick, and with
        ``save_total_limit=1`` no good checkpoint at all. Here Trainer writes into ``RUN/tmp-checkpoint-N/`` (see
        `_get_output_dir`), every rank waits, then the main process drops the pickled training arguments, renames
        the result to ``RUN/checkpoint-N`` and only then rotates. A failed write raises `CheckpointWriteError`
        naming the checkpoint that is still good."""
        run_dir = Path(self.args.output_dir)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging = run_dir / f"{STAGING_PREFIX}{name}"
        main = self.args.should_save
        if main:
            shutil.rmtree(staging, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self._checkpoint_staging = staging
        try:
            super()._save_checkpoint(model, trial, *args, **kwargs)
            self.accelerator.wait_for_everyone()
            if main:
                # A pickle that nothing reads back; the run's config.yaml holds the same settings.
                (staging / name / TRAINING_ARGS_NAME).unlink(missing_ok=True)
                publish(staging / name, run_dir / name)
                staging.rmdir()
        except Exception as error:  # any writer's failure (OSError, SafetensorError, torch's RuntimeError)
            if main:
                shutil.rmtree(staging, ignore_errors=True)
            if isinstance(error, TrainingError):
                raise
            raise CheckpointWriteError(describe_write_error(error, name, run_dir)) from error
        finally:
            self._checkpoint_staging = None
        if main:
            rotate_checkpoints(
                str(run_dir), self.args.save_total_limit, self.state.best_model_checkpoint, use_mtime=False
            )
        self.accelerator.wait_for_everyone()

    def _get_output_dir(self, trial: Any = None) -> str:
        """Trainer's output directory (``args.output_dir``, or a hyperparameter trial's folder); while
        `_save_checkpoint` stages a checkpoint, the staging folder, so Trainer writes the checkpoint there."""
        if self._checkpoint_staging is not None:
            return str(self._checkpoint_staging)
        return super()._get_output_dir(trial)

    # ------------------------------------------------------------------------------------ a finished run
    def load_finished(self, checkpoint: str) -> FinishedWeights | None:
        """Load a checkpoint that holds every step, for the final save without training (Trainer would run one
        more step from it). Under DeepSpeed the weights are consolidated from the checkpoint's files by the main
        process (there is no engine to load into: Trainer builds it inside ``train``), and returned; otherwise
        they are loaded into the model (None)."""
        self.state = TrainerState.load_from_json(str(Path(checkpoint) / TRAINER_STATE_NAME))
        if getattr(self, "is_deepspeed_enabled", False):
            return FinishedWeights(
                deepspeed_checkpoint_state_dict(checkpoint) if self.is_world_process_zero() else None
            )
        self._load_from_checkpoint(checkpoint)
        return None


# ------------------------------------------------------------------------------------------------ preemption
PREEMPTION_SIGNAL = signal.SIGUSR1
_STOP_REQUESTED = threading.Event()


class TrainingStopped(TrainingError):
    """Training stopped early on a preemption notice, after saving a checkpoint; ``--resume`` continues it."""


def request_stop(*_: Any) -> None:
    """The USR1 handler: ask the training in this process to stop at the next step boundary."""
    _STOP_REQUESTED.set()


def stop_requested() -> bool:
    return _STOP_REQUESTED.is_set()


def clear_stop_request() -> None:
    _STOP_REQUESTED.clear()


@contextmanager
def preemption_notice() -> Iterator[None]:
    """While training, USR1 (the notice Slurm sends before a time limit or preemption, ``--signal=USR1@N``) asks
    the run to checkpoint and stop instead of killing the process. Installed only from the main thread (Python
    delivers signals there); the previous handler is put back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(PREEMPTION_SIGNAL, request_stop)
    try:
        yield
    finally:
        signal.signal(PREEMPTION_SIGNAL, previous)


class PreemptionStop(TrainerCallback):
    """Stops the training loop after the step during which a stop was requested, with a checkpoint of that step.

    Every rank must stop at the same step (the checkpoint is a collective under FSDP and DeepSpeed), so with
    several processes the ranks agree at each step: the stop is taken when any rank had been asked by the time
    of the step's non-finite check, whose one all-reduce and host read carry this flag too
    (`NonFiniteGuard.stop_agreed`); a notice that comes later in the step stops the run after the next one. A
    single process reads its own flag at the end of the step. The last step of the run is not cut: that run
    simply finishes.
    """

    def __init__(self, trainer: Trainer, guard: NonFiniteGuard):
        self.trainer = trainer
        self.guard = guard
        self.stopped_at: int | None = None

    def _any_rank_asked(self) -> bool:
        if world_size() == 1 or not torch.distributed.is_initialized():
            return stop_requested()
        return self.guard.stop_agreed

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not self._any_rank_asked() or state.global_step >= state.max_steps:
            return
        control.should_save = True
        control.should_training_stop = True
        self.stopped_at = state.global_step
