"""What `symnoise analyze` reads: the run directories (or checkpoints) to analyse, the data, the models.

Everything that can be checked without a model is checked first, so a missing file is an `AnalysisError` naming it
before anything expensive loads: each RUN must hold ``symnoise_run.json`` (a checkpoint ``RUN/checkpoint-N`` reads
its run's) and final weights (``model.safetensors``, ``adapter_model.safetensors`` or a sharded model's index);
every data file must exist.

Examples. The training examples are the first N usable examples of ``--data``, tokenised as the run was (its
template and max length, from ``symnoise_run.json``; an example with no response token within the max length is
dropped, as in training). The held-out examples are the first N of ``--heldout``; without it, the last N of the
``--data`` file, which do not overlap the training examples when the file holds at least 2N usable ones; they are
held out from the run only if the run did not train on that file (the report says which).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import NoiseConfig
from ..data import DataError, load_records, tokenize_examples
from ..evaluation.runs import ReportError, read_run_info
from ..layout import FINAL_WEIGHTS, RunLayout

ADAPTER_CONFIG = "adapter_config.json"
CHECKPOINT_PREFIX = "checkpoint-"


class AnalysisError(ValueError):
    """A run, checkpoint or data file that cannot be analysed; the message names the file."""


@dataclass(frozen=True)
class Target:
    """One model to analyse: the run it belongs to, the directory its weights are in, and the run's settings."""

    run_dir: Path
    model_dir: Path
    info: dict[str, Any]
    noise: NoiseConfig

    @property
    def label(self) -> str:
        if self.model_dir == self.run_dir:
            return self.run_dir.name
        return f"{self.run_dir.name}/{self.model_dir.name}"

    @property
    def is_lora(self) -> bool:
        return (self.model_dir / ADAPTER_CONFIG).is_file()


def _run_of(path: Path) -> Path:
    """The run directory of a path: itself, or the parent of a ``checkpoint-N`` without its own run info."""
    if path.name.startswith(CHECKPOINT_PREFIX) and not RunLayout(path).run_info.is_file():
        return path.parent
    return path


def _has_weights(path: Path) -> bool:
    return any((path / name).is_file() for name in FINAL_WEIGHTS)


def checkpoints_of(run_dir: Path) -> list[Path]:
    """The run's complete checkpoints (those holding weights), in step order."""
    found = []
    for child in run_dir.glob(f"{CHECKPOINT_PREFIX}*"):
        step = child.name[len(CHECKPOINT_PREFIX) :]
        if child.is_dir() and step.isdigit() and _has_weights(child):
            found.append((int(step), child))
    return [path for _, path in sorted(found)]


def resolve_target(path: Path) -> Target:
    """A run directory or checkpoint, checked: its run info readable and its weights present."""
    if not path.is_dir():
        raise AnalysisError(f"{path}: no such run directory")
    run_dir = _run_of(path)
    info_file = RunLayout(run_dir).run_info
    if not info_file.is_file():
        raise AnalysisError(
            f"{info_file}: missing; {path} is not a run directory written by `symnoise train`"
        )
    if not _has_weights(path):
        names = " or ".join(FINAL_WEIGHTS)
        raise AnalysisError(f"{path}: no final model ({names} missing); has training finished?")
    try:
        info, noise = read_run_info(run_dir)
    except ReportError as error:
        raise AnalysisError(str(error)) from None
    for field in ("template", "max_length"):
        if field not in info:
            raise AnalysisError(f"{info_file}: field {field!r} is missing")
    return Target(run_dir, path, info, noise)


def resolve_targets(paths: list[Path], with_checkpoints: bool) -> list[Target]:
    """Every model to analyse: each path's, and with ``with_checkpoints`` each run's checkpoints before it."""
    targets = []
    for path in paths:
        target = resolve_target(path)
        if with_checkpoints and target.model_dir == target.run_dir:
            targets += [resolve_target(checkpoint) for checkpoint in checkpoints_of(target.run_dir)]
        targets.append(target)
    return targets


def check_data_file(path: Path, option: str) -> None:
    if not path.is_file():
        raise AnalysisError(f"{option} {path}: no such file")


@dataclass(frozen=True)
class DataSources:
    """Where the training and held-out examples come from, and how many of each."""

    train: Path
    heldout: Path | None
    examples: int
    train_limit: int | None = None  # read only the first rows of the training file (a run's data.limit)
    on_bad_row: str = "error"  # or "skip", as the run's data.on_bad_row

    @property
    def heldout_description(self) -> str:
        if self.heldout is not None:
            return f"first {self.examples} usable examples of {self.heldout}"
        return f"last {self.examples} usable examples of {self.train} (held out only if the run did not train on it)"


def read_records(sources: DataSources) -> dict[str, tuple[list, bool]]:
    """Per split, the records to draw its examples from and whether they are taken from the end: all of
    ``--data`` (training: the first usable ones; held-out without ``--heldout``: the last), or ``--heldout``."""
    try:
        train, _ = load_records(str(sources.train), on_bad_row=sources.on_bad_row, limit=sources.train_limit)
        heldout = (
            load_records(str(sources.heldout), on_bad_row=sources.on_bad_row)[0]
            if sources.heldout is not None
            else None
        )
    except ValueError as error:  # DataError, with the file and row in the message
        raise AnalysisError(str(error)) from None
    return {"train": (train, False), "heldout": (heldout, False) if heldout is not None else (train, True)}


def tokenise(records: list, from_end: bool, count: int, tokenizer, target: Target) -> list[dict]:
    """``count`` examples tokenised as the run's training tokenised them (template, max length, loss on the
    responses only), from the start of ``records`` (or the end): examples with no response token left within the
    max length are dropped by tokenising, as in training, and the next ones taken instead."""
    template, max_length = target.info["template"], int(target.info["max_length"])
    order = list(reversed(records)) if from_end else list(records)
    items: list[dict] = []
    start = 0
    while len(items) < count and start < len(order):
        chunk = order[start : start + 4 * count]
        start += len(chunk)
        try:
            dataset = tokenize_examples(chunk, tokenizer, template, max_length)
        except DataError as error:
            if "max_length" not in str(error):  # a record the template cannot render, not one too long
                raise AnalysisError(f"{target.label}: {error}") from None
            continue  # every example of the chunk was too long: try the next ones
        except ValueError as error:
            raise AnalysisError(f"{target.label}: {error}") from None
        items += [dataset[i] for i in range(len(dataset))]
    if not items:
        raise AnalysisError(
            f"{target.label}: no example keeps a response token within max_length={max_length} ({template} template)"
        )
    items = items[:count]
    return list(reversed(items)) if from_end else items


def load_model(target: Target, device: str, dtype: str):
    """The model with its trainable parameters as in training (a LoRA run: the adapters only), and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..generation import resolve_device, resolve_dtype

    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    tokenizer_dir = (
        target.model_dir if (target.model_dir / "tokenizer_config.json").is_file() else target.run_dir
    )
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    if target.is_lora:
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(  # hub kernels off, as every load here
            str(target.model_dir), is_trainable=True, dtype=torch_dtype, use_kernels=False
        )
    else:
        model = AutoModelForCausalLM.from_pretrained(
            str(target.model_dir), dtype=torch_dtype, use_kernels=False
        )
        model.requires_grad_(True)
    model.config.use_cache = False
    return model.to(device).eval(), tokenizer
