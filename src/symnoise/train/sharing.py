"""Where a run is shared: the Weights & Biases run it logs to, and the hub repository its final model goes to.

Both are checked before the model loads (wandb importable, a hub token present) so a missing package or login
costs seconds, not a model load. The W&B run is started by symnoise with the config's project, entity, name,
tags and group (each falling back to its usual ``WANDB_*`` environment variable); transformers' ``WandbCallback``
then logs into that run. The hub upload happens once, after the final model is written, with symnoise's model
card (transformers' own push would replace it with the Trainer's), into a private repository unless
``training.hub_private: false``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..layout import LOCK_FILE, START_RECORD, TENSORBOARD_DIR
from ..offline import hub_offline
from .config import ConfigError, TrainConfig

logger = logging.getLogger("symnoise.train")


class UploadError(RuntimeError):
    """Training finished and the run is saved, but the upload to the hub failed; the message says how to retry."""


WANDB_INSTALL_HINT = (
    'training.wandb needs the wandb package: pip install "symnoise[wandb]" (or pip install wandb)'
)

# What goes to the hub from a run directory: the final model or adapter, tokenizer, card and symnoise's run files.
HUB_IGNORE = [
    "checkpoint-*",
    "checkpoint-*/**",
    "tmp-*",
    "tmp-*/**",
    f"{TENSORBOARD_DIR}/**",
    "merged/**",
    "wandb/**",
    "*.partial.jsonl",
    ".write_test_*",
    "training_args.bin",
    LOCK_FILE,
    START_RECORD,
]  # these two: host, PID


def wandb_settings(config: TrainConfig, environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """``wandb.init`` keywords: the config's values, else the usual environment variables, else defaults."""
    section = config.training.wandb
    tags = section.tags if section and section.tags is not None else None
    if tags is None and environ.get("WANDB_TAGS"):
        tags = [tag.strip() for tag in environ["WANDB_TAGS"].split(",") if tag.strip()]
    return {
        "project": (section and section.project) or environ.get("WANDB_PROJECT") or "symnoise",
        "entity": (section and section.entity) or environ.get("WANDB_ENTITY"),
        "name": config.training.run_name
        or environ.get("WANDB_NAME")
        or Path(config.training.output_dir).name,
        "tags": tags,
        "group": (section and section.group) or environ.get("WANDB_RUN_GROUP"),
    }


def check_sharing(config: TrainConfig, environ: Mapping[str, str] = os.environ) -> None:
    """Refuse, before anything loads, a W&B section without wandb installed, or a hub push without a token."""
    if config.training.wandb is not None and importlib.util.find_spec("wandb") is None:
        raise ConfigError(WANDB_INSTALL_HINT)
    if config.training.push_to_hub:
        from huggingface_hub import get_token

        if hub_offline(environ):
            raise ConfigError(
                "training.push_to_hub: HF_HUB_OFFLINE is set, so nothing can be uploaded; unset it "
                "or set training.push_to_hub: false"
            )
        if get_token() is None:
            raise ConfigError(
                "training.push_to_hub needs a Hugging Face token: run `hf auth login` or set HF_TOKEN"
            )


def start_wandb(config: TrainConfig, run_dir: Path):
    """Start the W&B run for this training (main process only), or None when W&B is not in report_to."""
    if "wandb" not in config.training.report_to:
        return None
    import wandb

    if wandb.run is not None:  # started by the caller (symnoise.train from a script): log into it as it is
        return None
    settings = wandb_settings(config)
    logger.info("W&B run %r in project %r", settings["name"], settings["project"])
    return wandb.init(**settings, dir=str(run_dir), config=config.to_dict())


def finish_wandb(run) -> None:
    if run is not None:
        run.finish()


def hub_repo_id(config: TrainConfig) -> str:
    return config.training.hub_model_id or Path(config.training.output_dir).name


def push_to_hub(config: TrainConfig, run_dir: Path, api=None) -> str:
    """Upload the finished run directory's model, tokenizer, model card and run files; returns the repo URL."""
    from huggingface_hub import HfApi

    api = api or HfApi()
    repo_id = hub_repo_id(config)
    try:
        repo = api.create_repo(repo_id, private=config.training.hub_private, exist_ok=True, repo_type="model")
        repo_id = getattr(repo, "repo_id", None) or repo_id
        api.upload_folder(
            repo_id=repo_id,
            folder_path=str(run_dir),
            repo_type="model",
            ignore_patterns=HUB_IGNORE,
            commit_message=f"symnoise: {config.noise.method} (alpha {config.noise.alpha}) fine-tune "
            f"of {config.model.name}",
        )
    except Exception as error:  # network, permissions, quota: the run itself is complete and saved
        private = " --private" if config.training.hub_private else ""
        raise UploadError(
            f"the run finished and is saved in {run_dir}, but the upload to {repo_id} failed "
            f"({type(error).__name__}: {error}); upload it later with: hf upload {repo_id} {run_dir}"
            f"{private} --exclude 'checkpoint-*' --exclude 'runs/*'"
        ) from error
    url = f"https://huggingface.co/{repo_id}"
    logger.info("uploaded %s to %s", run_dir, url)
    return url
