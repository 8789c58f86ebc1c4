"""Who owns a run directory: claiming it for one run, and what it holds.

A run directory holds one run. Three things keep it that way:

* **A lock** (`symnoise.train.run_lock.RunLock`) on ``RUN/symnoise.lock`` for the whole run; a second run into the
  same directory is refused with the holder's PID and host.
* **A start record** (`symnoise.train.start_record`): ``RUN/run_start.json``, what the run was started with;
  ``--resume`` compares the new config with it and refuses a difference that changes training.
* **No mixing on a fresh start.** A fresh run into a directory that holds a run (finished, with a checkpoint,
  or stopped before its first checkpoint) is refused and told about ``--resume`` and ``--overwrite``;
  ``--overwrite`` deletes only the files symnoise writes (`symnoise.layout.TRAIN_FILES`), and files symnoise did
  not write are never deleted or overwritten: a directory holding any is refused.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..files import FileFormatError, read_json, remove_empty_dirs
from ..layout import (
    COMPANION_FILES,
    LOCK_FILE,
    RUN_INFO,
    START_RECORD,
    TRAIN_FILES,
    TRAIN_PATTERNS,
    RunLayout,
)
from .config import ConfigError, TrainConfig
from .distributed import is_main_process
from .preflight import check_output_dir, make_output_dir, probe_writable
from .reliability import checkpoint_step, last_complete_checkpoint
from .run_lock import RunLock
from .start_record import (
    legacy_record,
    read_start_record,
    record_resume,
    refuse_training_changes,
    run_changes,
    start_record,
    write_start_record,
)

__all__ = ["Claim", "Contents", "claim_run_dir", "training_began"]

logger = logging.getLogger("symnoise.train")


# ------------------------------------------------------------------------------------------ contents
def _is_train_file(name: str) -> bool:
    return name in TRAIN_FILES or any(p.match(name) for p in TRAIN_PATTERNS)


@dataclass
class Contents:
    """What a run directory holds, sorted into symnoise's own files, companions and everything else."""

    ours: list[Path]
    foreign: list[Path]
    marked: bool  # a start record (or, from older versions, symnoise_run.json) says a run lives here

    @classmethod
    def of(cls, run_dir: Path) -> Contents:
        entries = sorted(run_dir.iterdir()) if run_dir.is_dir() else []
        names = {p.name for p in entries}
        marked = START_RECORD in names or RUN_INFO in names
        ours, foreign = [], []
        for path in entries:
            if path.name in COMPANION_FILES:
                continue
            structural = path.name == LOCK_FILE or path.name.startswith(("tmp-", ".write_test_"))
            (ours if structural or (marked and _is_train_file(path.name)) else foreign).append(path)
        return cls(ours, foreign, marked)


def describe_run(run_dir: Path) -> str:
    if RunLayout(run_dir).is_finished():
        return "a finished run"
    if finished_without_model(run_dir):
        return "a finished run that saved no model (training.save_model: false)"
    checkpoint = last_complete_checkpoint(run_dir)
    if checkpoint is not None:
        return f"an unfinished run with {checkpoint.name}"
    return "an unfinished run that stopped before its first checkpoint"


def finished_without_model(run_dir: Path) -> bool:
    """Whether a run trained to the end with ``training.save_model: false``: its summary says so."""
    summary = RunLayout(run_dir).summary
    try:
        data = read_json(summary) if summary.is_file() else {}
    except FileFormatError:  # a torn summary: not a finished run
        return False
    return isinstance(data, dict) and data.get("finished") is True and data.get("model_saved") is False


def remove_run_files(contents: Contents, keep: tuple[str, ...] = ()) -> list[str]:
    """Delete symnoise's own files (never the lock, never a file it did not write); returns the names."""
    removed = []
    for path in contents.ours:
        if path.name in (LOCK_FILE, *keep):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
        removed.append(path.name)
    return removed


# ------------------------------------------------------------------------------------------ claiming
@dataclass
class Claim:
    """A run directory taken for one run: its lock (main process only) and whether to resume a checkpoint."""

    run_dir: Path
    resume: bool
    lock: RunLock | None
    fresh: bool = False  # this run wrote the start record of a new run
    # the folders this run created: the run directory and the parents it made for it
    created: list[Path] = field(default_factory=list)

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self.lock is None:
            return
        failed_early = (
            exc_type is not None
            and issubclass(exc_type, Exception)
            and self.fresh
            and not training_began(self.run_dir)
        )
        if failed_early:  # a bad input found before training: leave no half-made run behind
            remove_run_files(Contents.of(self.run_dir))
        self.lock.release()
        if failed_early:
            _remove_traces(self.lock, self.created)


def _remove_traces(lock: RunLock, created: list[Path]) -> None:
    """After a refused or failed start: remove the lock file this run made, then the folders it made (the run
    directory and any parents, ``runs/`` of ``runs/my-run``) that are empty. A folder that existed before the run,
    or that holds anything, stays."""
    if lock.created:
        lock.path.unlink(missing_ok=True)
    remove_empty_dirs(created)


def _foreign_error(run_dir: Path, foreign: list[Path]) -> ConfigError:
    names = ", ".join(p.name for p in foreign[:8]) + (", ..." if len(foreign) > 8 else "")
    return ConfigError(
        f"training.output_dir: {run_dir} holds files symnoise did not write ({names}); symnoise "
        "never overwrites or deletes them: choose a new or empty directory, or move them out"
    )


def claim_run_dir(config: TrainConfig, resume: bool, overwrite: bool) -> Claim:
    """Lock ``training.output_dir`` and decide how this run may use it; raise `ConfigError` when it may not.

    Fresh run: the directory must be new, empty, or hold only symnoise's files of an earlier run with
    ``overwrite`` (they are deleted). Resume: the config is compared with the start record. ``--resume`` on a run
    that stopped before its first checkpoint starts it again from step 0 with the recorded config. Only the main
    process locks, writes and deletes; the others only work out the same ``resume``.
    """
    run_dir = Path(config.training.output_dir)
    if resume and overwrite:
        raise ConfigError(
            "--resume and --overwrite contradict each other: --resume continues the run in "
            "training.output_dir, --overwrite deletes it; pass one"
        )
    check_output_dir(run_dir)
    main = is_main_process()
    created: list[Path] = []
    if main:
        created = make_output_dir(run_dir)
        probe_writable(run_dir)
        lock = RunLock(run_dir).acquire()
    else:
        lock = None
    try:
        effective = _decide(config, run_dir, resume, overwrite, main)
    except BaseException:
        if lock is not None:
            lock.release()
            _remove_traces(lock, created)
        raise
    return Claim(run_dir, effective, lock, fresh=main and not resume, created=created)


def training_began(run_dir: Path) -> bool:
    """Whether a run in ``run_dir`` got as far as training: it logged, saved, or wrote a model.

    A run that stopped earlier (a bad config found after the start record was written, a kill while the model
    loaded) left only files that the next run writes again, so it holds nothing to lose or to mix with.
    """
    layout = RunLayout(run_dir)
    return (
        layout.is_finished()
        or any(
            path.exists()
            for path in (layout.metrics, layout.tensorboard, layout.nonfinite_log, layout.summary)
        )
        or any(
            checkpoint_step(p) is not None or p.name.startswith("tmp-checkpoint-") for p in run_dir.iterdir()
        )
    )


def _decide(config: TrainConfig, run_dir: Path, resume: bool, overwrite: bool, main: bool) -> bool:
    if not main:  # the main process checks, deletes and records; the others follow its decision
        return resume and last_complete_checkpoint(run_dir) is not None
    contents = Contents.of(run_dir)
    record = read_start_record(run_dir)
    checkpoint = last_complete_checkpoint(run_dir)
    if not resume:
        if contents.foreign:
            raise _foreign_error(run_dir, contents.foreign)
        holds_run = training_began(run_dir)
        if holds_run and not overwrite:
            state = describe_run(run_dir)
            finished = RunLayout(run_dir).is_finished() or finished_without_model(run_dir)
            hint = (
                "pass --resume to continue it"
                if checkpoint is not None and not finished
                else "pass --resume to start it again from step 0 with the config it was started with"
                if checkpoint is None and record is not None and not finished
                else ""
            )
            raise ConfigError(
                f"training.output_dir: {run_dir} already holds a run ({state}); "
                f"{hint + ', ' if hint else ''}pass --overwrite to delete it and start a new "
                "run, or choose another output_dir"
            )
        removed = remove_run_files(contents)
        if removed:
            logger.info(
                "%s: removed %d files of an earlier run in %s (%s)",
                "--overwrite" if holds_run else "it stopped before training began",
                len(removed),
                run_dir,
                ", ".join(removed[:10]) + (" ..." if len(removed) > 10 else ""),
            )
        write_start_record(run_dir, start_record(config))
        return False
    if checkpoint is None and record is None:
        raise ConfigError(
            f"--resume: no checkpoint in {run_dir} to resume from (saves cut short do not count)"
        )
    if contents.foreign and record is None:
        raise _foreign_error(run_dir, contents.foreign)
    if record is None:  # a run from a version without a start record: its config.yaml is the record
        record = legacy_record(run_dir)
    changes = run_changes(record, config)
    refuse_training_changes(changes, run_dir)
    record_resume(record, checkpoint, changes)
    if checkpoint is None:
        removed = remove_run_files(contents, keep=(START_RECORD,))
        logger.info(
            "--resume: %s stopped before its first checkpoint; starting it again from step 0 with the "
            "recorded config (removed %s)",
            run_dir,
            ", ".join(removed) or "nothing",
        )
    write_start_record(run_dir, record)
    return checkpoint is not None
