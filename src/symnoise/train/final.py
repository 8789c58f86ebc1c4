"""The end of a training run: the final model, written so that a crash never leaves a run that looks finished, and
the run's summary.

The final model is staged in ``RUN/tmp-final/`` and moved into the run directory with its weights last; only then
are ``metrics.csv`` and ``train_summary.json`` written. A checkpoint that already holds every step (the crash came
while the final model was written) is turned into the final model without training again
(`RecipeTrainer.load_finished`).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers.trainer import TRAINER_STATE_NAME, TRAINING_ARGS_NAME

from ..files import write_json_atomic, write_text_atomic
from ..layout import MODEL_CARD, RunLayout
from .base_license import base_model_license
from .config import TrainConfig
from .distributed import final_state_dict
from .metrics import jsonl_to_csv, model_card
from .reliability import STAGING_PREFIX, CheckpointWriteError, describe_write_error, publish_files

# The order the final model's files are moved in, after every other file: a sharded model's index, then the
# adapter or the weights, ``model.safetensors`` last (its presence marks a finished run).
WEIGHTS_LAST = (
    "model.safetensors.index.json",
    "adapter_config.json",
    "adapter_model.safetensors",
    "model.safetensors",
)


@dataclass
class FinishedWeights:
    """The final weights read from a finished checkpoint's files (main process; None on the others)."""

    state_dict: dict | None


def trained_to_the_end(checkpoint: str, config: TrainConfig) -> bool:
    """Whether a checkpoint already holds every step of the run (the crash came while writing the final model).

    Trainer would run one more step from such a checkpoint before noticing that it is done.
    """
    state = json.loads((Path(checkpoint) / TRAINER_STATE_NAME).read_text(encoding="utf-8"))
    if config.training.max_steps > 0:
        return state["global_step"] >= config.training.max_steps
    return state["global_step"] >= state["max_steps"] and state["num_train_epochs"] == config.training.epochs


def last_training_loss(trainer: Any) -> float | None:
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return losses[-1] if losses else None


def save_final(
    trainer: Any,
    tokenizer: Any,
    config: TrainConfig,
    run_dir: Path,
    template: str,
    final_loss: float | None,
    finished: FinishedWeights | None = None,
) -> None:
    """Write the final model into ``RUN/tmp-final/`` and move it into the run directory, weights last, so a
    crash or a full disk never leaves a ``model.safetensors`` that marks an unfinished run as finished.

    Every rank calls this: the full state dict is gathered by all of them (FSDP, ZeRO-3), and the main process
    writes one consolidated safetensors model (or LoRA adapter) with ``save_pretrained``. With
    ``training.save_model: false`` only the metrics and the summary are written (no rank gathers anything)."""
    if not config.training.save_model:
        if trainer.is_world_process_zero():
            write_summary(trainer, run_dir, final_loss, model_saved=False)
        trainer.accelerator.wait_for_everyone()
        return
    staging = run_dir / f"{STAGING_PREFIX}final"
    state_dict = final_state_dict(trainer) if finished is None else finished.state_dict
    if not trainer.is_world_process_zero():
        trainer.accelerator.wait_for_everyone()
        return
    try:
        shutil.rmtree(staging, ignore_errors=True)
        if state_dict is None:  # one process, DDP, ZeRO-1/2: the model's own state dict is whole
            trainer.save_model(str(staging))
        else:
            trainer._save(str(staging), state_dict=state_dict)
        tokenizer.save_pretrained(str(staging))
        (staging / TRAINING_ARGS_NAME).unlink(missing_ok=True)  # a pickle; config.yaml says the same safely
        write_text_atomic(
            staging / MODEL_CARD,
            model_card(
                config,
                template,
                trainer.state.global_step,
                final_loss,
                trainer.state.epoch,
                base_model_license(config.model.name, config.model.revision),
            ),
        )
        publish_files(staging, run_dir, last=WEIGHTS_LAST)
        write_summary(trainer, run_dir, final_loss, model_saved=True)
    except Exception as error:  # any writer's failure (OSError, SafetensorError, torch's RuntimeError)
        shutil.rmtree(staging, ignore_errors=True)
        raise CheckpointWriteError(describe_write_error(error, "the final model", run_dir)) from error
    trainer.accelerator.wait_for_everyone()


def write_summary(trainer: Any, run_dir: Path, final_loss: float | None, model_saved: bool) -> None:
    """``metrics.csv`` from ``metrics.jsonl``, then ``train_summary.json``: the last files of a finished run."""
    layout = RunLayout(run_dir)
    if layout.metrics.exists():
        jsonl_to_csv(layout.metrics, layout.metrics_csv)
    summary = {
        "steps": trainer.state.global_step,
        "final_loss": final_loss,
        "train_runtime_s": _runtime(trainer),
        "finished": True,
        "model_saved": model_saved,
    }
    write_json_atomic(layout.summary, summary)


def _runtime(trainer: Any) -> float | None:
    for entry in reversed(trainer.state.log_history):
        if "train_runtime" in entry:
            return entry["train_runtime"]
    return None
