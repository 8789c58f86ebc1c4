"""The Python API that mirrors the command line: ``symnoise.load_config`` and ``symnoise.train``.

    config = symnoise.load_config("qwen2.5-0.5b/alpaca-symnoise-lora", ["data.path=my_data.jsonl"])
    result = symnoise.train(config)          # what `symnoise train CONFIG data.path=...` does

A config is given as a YAML path, the name of a shipped config, a mapping with the same sections, or a
`TrainConfig`; overrides are the command line's dotted ``section.field=value`` strings.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .shipped_configs import resolve_config_path
from .train.config import TrainConfig, apply_overrides, validate_config
from .train.config import load_config as _load_config_file


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> TrainConfig:
    """A validated `TrainConfig` from a YAML file or shipped config name, with dotted overrides applied.

    Raises `symnoise.train.ConfigError` naming the file and field, as ``symnoise train`` reports it.
    """
    return _load_config_file(None if path is None else resolve_config_path(path), list(overrides))


def as_config(
    config: TrainConfig | Mapping[str, Any] | str | Path, overrides: Iterable[str] = ()
) -> TrainConfig:
    """Any accepted form of a config, validated, with overrides applied."""
    overrides = list(overrides)
    if isinstance(config, TrainConfig):
        return validate_config(apply_overrides(config.to_dict(), overrides)) if overrides else config
    if isinstance(config, Mapping):
        return validate_config(apply_overrides(copy.deepcopy(dict(config)), overrides), "config mapping")
    return load_config(config, overrides)


def train(
    config: TrainConfig | Mapping[str, Any] | str | Path, overrides: Iterable[str] = (), resume: bool = False
):
    """Run one fine-tuning job, as ``symnoise train`` does; returns a `symnoise.train.TrainResult`
    (run directory, steps, final loss, number of training examples).

    Under a multi-process launch (torchrun, accelerate launch) the process group stays open for the caller's own
    use; end it with `symnoise.train.distributed.leave_process_group()` before the script exits (``symnoise
    train`` does), since a gloo group still open at exit aborts some exits at random.
    """
    from .train.recipe import train as run_recipe

    return run_recipe(as_config(config, overrides), resume=resume)
