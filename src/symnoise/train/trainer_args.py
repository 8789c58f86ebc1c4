"""``training.trainer_args``: any other ``transformers.TrainingArguments`` field, passed through as given.

symnoise builds ``TrainingArguments`` from its own config fields; ``trainer_args`` adds the rest of the Trainer's
vocabulary (``optim``, ``adam_beta2``, ``torch_compile``, ``load_best_model_at_end``, ...). The names are checked
against the installed transformers' dataclass when the config is validated, so a typo fails with the closest
match before anything is loaded. symnoise's own fields keep priority: a name that one of them sets is refused
with the field to use instead, never silently overridden, and so are the few the recipe needs fixed.
"""

from __future__ import annotations

import dataclasses
import difflib
from functools import cache
from typing import Any

# TrainingArguments field -> the symnoise config field that sets it.
OWNED: dict[str, str] = {
    "output_dir": "training.output_dir",
    "num_train_epochs": "training.epochs",
    "max_steps": "training.max_steps",
    "learning_rate": "training.learning_rate",
    "weight_decay": "training.weight_decay",
    "lr_scheduler_type": "training.lr_scheduler",
    "warmup_steps": "training.warmup_ratio",
    "per_device_train_batch_size": "training.per_device_batch_size",
    "gradient_accumulation_steps": "training.effective_batch_size (accumulation = effective / (per-device x "
    "processes))",
    "max_grad_norm": "training.max_grad_norm",
    "activation_checkpointing": "training.gradient_checkpointing",
    "gradient_checkpointing": "training.gradient_checkpointing",
    "bf16": "training.precision",
    "fp16": "training.precision",
    "seed": "training.seed",
    "data_seed": "training.seed",
    "logging_steps": "training.logging_steps",
    "save_steps": "training.save_steps",
    "save_total_limit": "training.save_total_limit",
    "eval_steps": "training.eval_steps",
    "eval_strategy": "training.eval_steps (evaluation runs every eval_steps when data.eval_path is set)",
    "report_to": "training.report_to",
    "dataloader_num_workers": "training.dataloader_num_workers",
    "use_cpu": "training.device",
    "train_sampling_strategy": "data.group_by_length",
    "run_name": "training.run_name",
    "push_to_hub": "training.push_to_hub (symnoise uploads the final model with its model card)",
    "hub_model_id": "training.hub_model_id",
    "hub_private_repo": "training.hub_private",
    "resume_from_checkpoint": "symnoise train --resume",
    "neftune_noise_alpha": "the noise section (transformers' NEFTune hook would add a second noise)",
}

# Fields the recipe's own machinery depends on, with the reason they cannot be changed.
FIXED: dict[str, str] = {
    "remove_unused_columns": "the collator needs the example index column symnoise adds",
    "label_names": "symnoise's collators always produce 'labels'",
    "prediction_loss_only": "evaluation reports the loss; gathering eval logits would cost vocabulary x tokens memory",
    "save_strategy": "checkpoints are written every training.save_steps and made atomic by symnoise "
    "(training.save_model: false turns them off)",
    "hub_token": "a token does not belong in a config file: use `hf auth login` or HF_TOKEN",
    "hub_strategy": "symnoise uploads the final model once, after training (training.push_to_hub)",
    "hub_always_push": "symnoise uploads the final model once, after training (training.push_to_hub)",
    "hub_revision": "symnoise uploads the final model to the main branch",
    "local_rank": "set by the launcher (torchrun, accelerate launch)",
}

# HF names accepted directly under `training:` as aliases of symnoise's field of the same meaning.
TRAINING_ALIASES: dict[str, str] = {
    "num_train_epochs": "epochs",
    "lr_scheduler_type": "lr_scheduler",
    "per_device_train_batch_size": "per_device_batch_size",
}


@cache
def training_argument_names() -> frozenset[str]:
    """The constructor fields of the installed ``transformers.TrainingArguments``."""
    from transformers import TrainingArguments

    return frozenset(field.name for field in dataclasses.fields(TrainingArguments) if field.init)


def check_trainer_args(values: dict[str, Any]) -> dict[str, Any]:
    """Raise ValueError naming every unknown, owned or fixed name; returns the mapping unchanged."""
    if not values:
        return values
    known = training_argument_names()
    problems = []
    for name in values:
        if name in OWNED:
            problems.append(f"{name} is set by symnoise from {OWNED[name]}; set that instead")
        elif name in FIXED:
            problems.append(f"{name} cannot be changed: {FIXED[name]}")
        elif name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else ""
            shown = name if name.isidentifier() else repr(name)
            problems.append(f"{shown} is not a field of transformers.TrainingArguments{hint}")
    if problems:
        raise ValueError("; ".join(problems))
    return values


def rename_aliases(training: Any) -> Any:
    """``training.num_train_epochs: 2`` -> ``training.epochs: 2``; both at once is an error."""
    if not isinstance(training, dict):
        return training
    renamed = dict(training)
    for alias, field in TRAINING_ALIASES.items():
        if alias in renamed:
            if field in renamed:
                raise ValueError(f"{alias} and {field} are the same setting; give only {field}")
            renamed[field] = renamed.pop(alias)
    return renamed


def merge(own: dict[str, Any], passed: dict[str, Any]) -> dict[str, Any]:
    """symnoise's TrainingArguments keywords plus the passed-through ones; an overlap is an error, not a
    silent override (config validation already refuses owned names, so this guards the recipe itself)."""
    overlap = sorted(set(own) & set(passed) - _DEFAULTS_OPEN_TO_OVERRIDE)
    if overlap:
        raise ValueError(f"training.trainer_args: {', '.join(overlap)} already set by symnoise")
    return {**own, **passed}


# Keywords the recipe sets only as defaults, which trainer_args may change.
_DEFAULTS_OPEN_TO_OVERRIDE = frozenset(
    {
        "optim",
        "disable_tqdm",
        "activation_checkpointing_kwargs",
        "per_device_eval_batch_size",
        "logging_nan_inf_filter",
        "accelerator_config",
    }
)
