"""One line to add noisy embeddings to an unmodified transformers ``Trainer`` or TRL ``SFTTrainer``::

    trainer = SFTTrainer(model=model, args=args, train_dataset=data)
    symnoise.hf.add_noise(trainer, symnoise.NoiseConfig("symnoise", alpha=5))
    trainer.train()

The noise is attached when ``train()`` starts and removed when it returns or raises; the schedule follows
``global_step / max_steps``; the noise generator state is saved in every checkpoint (with the Trainer's RNG
states, while the checkpoint is being written) and restored by ``train(resume_from_checkpoint=...)``;
``noise_norm`` and ``noise_alpha`` are added to the training logs.
``execution='paired'`` runs each training step as one forward/backward pass per noisy view of the batch (the
symmetric pair's two, sharing one ``eps``; ``draws`` more); trainers that compute their loss from the model's
outputs (TRL's DPO/KTO/ORPO, label smoothing, ``compute_loss_func``) always get it when there are several views,
and their reference and probe passes stay clean (see `symnoise.trainers`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from .attach import NoiseHandle, attach
from .config import NoiseConfig
from .files import write_atomic
from .trainers import TrainerIntegration, execution_for

NOISE_STATE_PATTERN = "symnoise_noise_rank{rank}.pt"


class TrainerNoise(TrainerCallback):
    """The attachment of a `NoiseConfig` to one trainer. Created by `add_noise`; ``remove()`` undoes it.

    It sets instance attributes that wrap the trainer's own methods (a subclass's overrides included), so they run
    outside them: ``train`` (attach the noise for the call, restore its state on resume), ``log`` (add
    ``noise_norm`` and ``noise_alpha``), ``_save_rng_state`` (save the noise state in the checkpoint) and, for
    ``execution='paired'`` with several views per example, ``training_step`` (the trainer's step once per view;
    ``pass_index`` says which pass runs) and ``compute_loss`` (weighted by the pass, ``1/views``).
    """

    def __init__(self, trainer: Any, config: NoiseConfig):
        if not isinstance(config, NoiseConfig):
            raise TypeError(f"config must be a symnoise.NoiseConfig; got {type(config).__name__}")
        if getattr(trainer.args, "neftune_noise_alpha", None) is not None:
            raise ValueError(
                "the trainer's args.neftune_noise_alpha is set: transformers would add its own "
                "NEFTune noise on top of symnoise's; set neftune_noise_alpha=None"
            )
        if getattr(trainer, "_symnoise", None) is not None:
            raise RuntimeError("symnoise noise is already added to this trainer")
        self.integration = TrainerIntegration(trainer)
        config = execution_for(trainer, config)
        paired = config.views > 1 and config.execution == "paired"
        if paired and getattr(trainer, "is_deepspeed_enabled", False):
            raise ValueError(
                f"execution='paired' runs {config.views} backward passes per step (one per noisy view), which "
                "DeepSpeed turns into as many optimizer steps; use execution='concat' with DeepSpeed"
            )
        self.trainer = trainer
        self.config = config
        self.handle: NoiseHandle | None = None
        self._pass_weight = 1.0
        self.pass_index = 0  # which view's pass the trainer's training step is running (0: the first or only)
        self._originals = {
            "train": trainer.train,
            "log": trainer.log,
            "training_step": trainer.training_step,
            "compute_loss": trainer.compute_loss,
        }
        trainer.train = self._train
        trainer.log = self._log
        if callable(getattr(trainer, "_save_rng_state", None)):
            self._originals["_save_rng_state"] = trainer._save_rng_state
            trainer._save_rng_state = self._save_rng_state
        if paired:
            trainer.training_step = self._paired_training_step
            trainer.compute_loss = self._weighted_compute_loss
        trainer.add_callback(self)
        trainer._symnoise = self

    def remove(self) -> None:
        """Give the trainer back its own methods and drop the callback."""
        for name in self._originals:
            vars(self.trainer).pop(name, None)
        self.trainer.remove_callback(self)
        self.trainer._symnoise = None

    # ------------------------------------------------------------ wrapped trainer methods
    def _train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        self.handle = attach(self.trainer.model, self.config)
        try:
            self.integration.install(self.handle)
            checkpoint = self._checkpoint_dir(resume_from_checkpoint)
            if checkpoint is not None:
                self._load_noise_state(checkpoint)
            return self._originals["train"](resume_from_checkpoint, *args, **kwargs)
        finally:
            self.integration.uninstall()
            self.handle.remove()

    def _paired_training_step(
        self, model: torch.nn.Module, inputs: dict, num_items_in_batch: Any = None
    ) -> Any:
        total = 0.0
        # Trainer.training_step switches to training mode itself, but paired_passes() must see it already
        # (a model fresh from from_pretrained() is in eval mode and would get no pair on the first step).
        model.train()
        try:
            tokens = self.integration.token_count()
            for index, weight in enumerate(self.handle.paired_passes()):
                self._pass_weight, self.pass_index = weight, index
                if index:
                    self.integration.rewind_token_count(tokens)
                # A copy per pass: compute_loss may pop labels from the dict it is given.
                total = total + self._originals["training_step"](model, dict(inputs), num_items_in_batch)
        finally:
            self._pass_weight, self.pass_index = 1.0, 0
        return total

    def _weighted_compute_loss(self, *args: Any, **kwargs: Any) -> Any:
        result = self._originals["compute_loss"](*args, **kwargs)
        if self._pass_weight == 1.0:
            return result
        if isinstance(result, tuple):
            return (result[0] * self._pass_weight, *result[1:])
        return result * self._pass_weight

    def _log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> Any:
        handle = self.handle
        if handle is not None and handle.attached and "loss" in logs:
            if handle.last_noise_norm is not None:
                logs["noise_norm"] = round(float(handle.last_noise_norm), 6)
            logs["noise_alpha"] = handle.alpha
        return self._originals["log"](logs, *args, **kwargs)

    def _save_rng_state(self, output_dir: str, *args: Any, **kwargs: Any) -> Any:
        # The noise generator is one more RNG: saved by every rank, inside the checkpoint being written, before
        # the checkpoint is complete (an atomic save renames it only afterwards).
        result = self._originals["_save_rng_state"](output_dir, *args, **kwargs)
        if self.handle is not None:
            save_noise_state(self.handle, Path(output_dir))
        return result

    # ------------------------------------------------------------ callback events
    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.handle is not None and state.max_steps:
            self.handle.set_progress(state.global_step / state.max_steps)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.handle is None:
            return
        checkpoint = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        # Normally written already with the RNG states; this covers trainers that do not save those
        # (save_only_model) or override how checkpoints are written.
        if (
            checkpoint.is_dir()
            and not (checkpoint / NOISE_STATE_PATTERN.format(rank=self.handle.rank)).exists()
        ):
            save_noise_state(self.handle, checkpoint)

    # ------------------------------------------------------------ checkpoints
    def _checkpoint_dir(self, resume_from_checkpoint: str | bool | None) -> Path | None:
        if resume_from_checkpoint is True:
            last = get_last_checkpoint(self.trainer.args.output_dir)
            return Path(last) if last else None
        if isinstance(resume_from_checkpoint, (str, os.PathLike)):
            return Path(resume_from_checkpoint)
        return None

    def _load_noise_state(self, checkpoint: Path) -> None:
        path = checkpoint / NOISE_STATE_PATTERN.format(rank=self.handle.rank)
        if path.is_file():
            self.handle.load_state_dict(torch.load(path, weights_only=True))


def save_noise_state(handle: NoiseHandle, directory: Path) -> Path:
    """Write one rank's noise state next to a checkpoint (temporary file, then rename)."""
    state = handle.state_dict()
    return write_atomic(
        Path(directory) / NOISE_STATE_PATTERN.format(rank=handle.rank), lambda tmp: torch.save(state, tmp)
    )


def add_noise(trainer: Any, config: NoiseConfig) -> TrainerNoise:
    """Add noisy embeddings to ``trainer`` (``transformers.Trainer``, TRL's ``SFTTrainer`` or any subclass)."""
    return TrainerNoise(trainer, config)
