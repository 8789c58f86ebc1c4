"""What the commands keep out of their output: other libraries' messages that tell the user nothing, and
progress bars where nobody watches them.

Each message silenced here is named exactly (its logger or warning class, and the start of its text), with the
reason; everything else those libraries say still reaches the user. The ``symnoise`` command installs these at
start (`quiet_command_output`); the lm-evaluation-harness filter is held by `symnoise leaderboard`'s runs only
(`dropped_messages`), which report how many messages it dropped.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO


class DropMessages(logging.Filter):
    """Drops the records of a logger whose message starts with ``prefix``; counts them and keeps the first."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix
        self.dropped = 0
        self.first: str | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.startswith(self.prefix):
            return True
        self.dropped += 1
        self.first = self.first or message
        return False


@contextmanager
def dropped_messages(logger_name: str, prefix: str) -> Iterator[DropMessages]:
    """While the block runs, drop logger ``logger_name``'s messages starting with ``prefix``; yields the filter,
    whose ``dropped`` and ``first`` say what it kept out."""
    logger = logging.getLogger(logger_name)
    message_filter = DropMessages(prefix)
    logger.addFilter(message_filter)
    try:
        yield message_filter
    finally:
        logger.removeFilter(message_filter)


# DeepSpeed logs this warning whenever it is imported on a machine without a GPU (accelerate and the Trainer import
# it when it is installed), so every CPU command printed it, DeepSpeed used or not. Its own logger, "DeepSpeed",
# writes to stdout with a handler of its own; a filter on the logger drops this one message before that handler.
DEEPSPEED_LOGGER = "DeepSpeed"
DEEPSPEED_CPU_NOTICE = "Setting accelerator to CPU"

# lm-evaluation-harness warns once per request whose context and continuation exceed the model's length (6,481
# lines in one leaderboard run on a 2k-context model); `symnoise leaderboard` drops them and prints their count.
LM_EVAL_LOGGER = "lm_eval.models.huggingface"
LM_EVAL_TRUNCATION = "Combined length of context"

# peft's PeftModel reads `model.is_gradient_checkpointing`, which transformers 5 deprecated in favour of
# `is_activation_checkpointing`: every LoRA run, generation and export printed this FutureWarning, which names
# code neither symnoise nor the user calls (peft will follow the rename). Only this message, from that module.
PEFT_CHECKPOINTING_WARNING = r"`is_gradient_checkpointing` is deprecated"
PEFT_CHECKPOINTING_MODULE = r"transformers\.modeling_utils"


def quiet_deepspeed_cpu_notice() -> None:
    """Drop DeepSpeed's "Setting accelerator to CPU" warning (once installed, for the whole process)."""
    logger = logging.getLogger(DEEPSPEED_LOGGER)
    if not any(isinstance(f, DropMessages) and f.prefix == DEEPSPEED_CPU_NOTICE for f in logger.filters):
        logger.addFilter(DropMessages(DEEPSPEED_CPU_NOTICE))


def quiet_known_warnings() -> None:
    """Ignore the FutureWarning about ``is_gradient_checkpointing`` that peft triggers in transformers."""
    warnings.filterwarnings(
        "ignore",
        message=PEFT_CHECKPOINTING_WARNING,
        category=FutureWarning,
        module=PEFT_CHECKPOINTING_MODULE,
    )


# ------------------------------------------------------------------------------------------ progress bars
# What turns off the progress bars of huggingface_hub, transformers (weight loading and saving) and datasets, and
# of tqdm in the processes a command starts (tqdm reads TQDM_DISABLE when it is imported, which in this process
# happened with torch, before any command code runs: `disable_tqdm_bars` covers this process).
PROGRESS_BAR_SWITCHES = {
    "TQDM_DISABLE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
}


# The bars that still say how far they are off a terminal, as `ProgressLines` (about twenty lines): the long loops
# with nothing else to show, lm-evaluation-harness's requests (a leaderboard run on a 7B model is tens of minutes of
# them). Named by the description the harness gives them; a bar the library itself disables (ranks but the first)
# stays silent.
LINE_BARS = (
    "Running loglikelihood requests",
    "Running generate_until requests",
    "Running loglikelihood_rolling requests",
)


def disable_tqdm_bars() -> None:
    """Every tqdm bar of this process is created disabled, also where a library passes ``disable=False``
    (lm-evaluation-harness's request bars): iterating and counting work, nothing is drawn. The bars of
    `LINE_BARS` print `ProgressLines` instead."""
    from tqdm import std

    if getattr(std.tqdm.__init__, "_symnoise_quiet", False):
        return
    original = std.tqdm.__init__

    def quiet_init(self: Any, *args: Any, **kwargs: Any) -> None:
        desc, total = str(kwargs.get("desc") or ""), kwargs.get("total")
        as_lines = desc.startswith(LINE_BARS) and isinstance(total, int) and not kwargs.get("disable")
        kwargs["disable"] = True
        original(self, *args, **kwargs)
        if as_lines:
            self.update = ProgressLines(total, unit="request", desc=desc).update

    quiet_init._symnoise_quiet = True  # type: ignore[attr-defined]
    std.tqdm.__init__ = quiet_init  # type: ignore[method-assign]


def quiet_progress_bars_unless_terminal(stream: TextIO | None = None) -> None:
    """No progress bars when stderr is not a terminal (a log file, a pipe, a Slurm job): redrawn bars fill such
    logs with carriage returns (a 90 KB quickstart log). The Trainer's metrics lines and the commands' own progress
    lines (`ProgressLines`) say how the work goes instead. A switch the user set is left as it is."""
    if not (stream or sys.stderr).isatty():
        for variable, value in PROGRESS_BAR_SWITCHES.items():
            os.environ.setdefault(variable, value)
        disable_tqdm_bars()


def quiet_command_output() -> None:
    """What the ``symnoise`` command installs before a sub-command runs."""
    quiet_deepspeed_cpu_notice()
    quiet_known_warnings()
    quiet_progress_bars_unless_terminal()


# ------------------------------------------------------------------------------------------ progress lines
class ProgressLines:
    """A progress display for logs: ``DESC: done/total UNIT`` on a line of its own about twenty times per run
    and at the end, where a terminal gets a redrawn bar. Has the ``update`` and ``close`` of a tqdm bar."""

    def __init__(
        self, total: int, initial: int = 0, unit: str = "it", desc: str = "", stream: TextIO | None = None
    ):
        self.total, self.n, self.unit, self.desc = total, initial, unit, desc
        self.stream = stream or sys.stderr
        self.step = max(1, total // 20)
        self.next_line = (initial // self.step + 1) * self.step

    def update(self, count: int = 1) -> None:
        self.n += count
        if count > 0 and (self.n >= self.next_line or self.n >= self.total):
            self.next_line = (self.n // self.step + 1) * self.step
            print(f"{self.desc}: {self.n}/{self.total} {self.unit}s", file=self.stream, flush=True)

    def close(self) -> None:
        pass


def progress_bar(total: int, initial: int = 0, unit: str = "it", desc: str = "", enabled: bool = True) -> Any:
    """A tqdm bar on a terminal, `ProgressLines` elsewhere, or a silent bar when not ``enabled``."""
    from tqdm.auto import tqdm

    if enabled and not sys.stderr.isatty():
        return ProgressLines(total, initial, unit, desc)
    return tqdm(total=total, initial=initial, unit=unit, desc=desc, disable=not enabled)
