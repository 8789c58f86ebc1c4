"""Who owns a run directory, and what it was started with.

A run directory holds one run. Three things keep it that way:

* **A lock.** `RunLock` holds an exclusive ``flock`` on ``RUN/symnoise.lock`` for the whole run and writes its
  PID, host and start time into it. The OS drops the lock when the process dies (``kill -9`` included), so a lock
  file left by a killed run is taken over, with a log line naming the old holder. A second run into the same
  directory is refused with the holder's PID and host. ``flock`` works across processes on one machine and, on
  Linux NFS, across machines (it is mapped to POSIX locks there); on a file system without locks the PID record
  alone is checked.
* **A start record.** ``RUN/run_start.json`` holds the resolved config, a hash of each data file, the base
  model's identity (a local folder's config and sampled weight hashes; a hub model's commit) and the number of
  processes, written once when the run starts (before the data is read). ``--resume`` loads a hub model at the
  recorded commit, refuses a local model whose files changed, and compares the new config with the record: a
  difference that changes training (noise, data, model, LoRA, optimiser, schedule, batch, steps) is refused,
  naming each field with both values; a difference in a field that does not change the result
  (`HARMLESS_FIELDS`) is allowed, logged, and appended to the record's ``resumes`` list.
* **No mixing on a fresh start.** A fresh run into a directory that holds a run (finished, with a checkpoint,
  or stopped before its first checkpoint) is refused and told about ``--resume`` and ``--overwrite``;
  ``--overwrite`` deletes only the files symnoise writes, and files symnoise did not write are never deleted or
  overwritten: a directory holding any is refused.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import __version__
from ..offline import hub_commit
from .config import ConfigError, TrainConfig, validate_config
from .distributed import is_main_process, world_size
from .metrics import data_paths
from .preflight import WEIGHT_SUFFIXES, check_output_dir, make_output_dir, probe_writable
from .reliability import checkpoint_step, last_complete_checkpoint

logger = logging.getLogger("symnoise.train")

LOCK_FILE = "symnoise.lock"
START_RECORD = "run_start.json"

# Fields that change how a run is logged, saved or evaluated but not what it trains. Every other field (and any
# field added later) counts as changing training.
HARMLESS_FIELDS = frozenset(
    {
        "training.output_dir",
        "training.logging_steps",
        "training.save_steps",
        "training.save_total_limit",
        "training.eval_steps",
        "training.report_to",
        "training.dataloader_num_workers",
        "training.on_nonfinite",
        "training.gradient_checkpointing",
        "training.trained_logits_only",
        "data.eval_path",
    }
)

# What `symnoise train` writes into a run directory (and `--overwrite` may delete).
TRAIN_FILES = frozenset(
    {
        LOCK_FILE,
        START_RECORD,
        "config.yaml",
        "symnoise_run.json",
        "data_report.json",
        "metrics.jsonl",
        "metrics.csv",
        "runs",
        "nonfinite_steps.jsonl",
        "train_summary.json",
        "README.md",
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "model.safetensors.index.json",
        "adapter_model.safetensors",
        "adapter_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "chat_template.jinja",
        "chat_template.json",
        "tokenizer.model",
        "vocab.json",
        "vocab.txt",
        "merges.txt",
        "spiece.model",
        "sentencepiece.bpe.model",
    }
)
TRAIN_PATTERNS = (
    re.compile(r"^checkpoint-\d+$"),
    re.compile(r"^tmp-.+"),
    re.compile(r"^\.write_test_\d+$"),
    re.compile(r"^model-\d+-of-\d+\.safetensors$"),
    re.compile(r".+\.tmp$"),
)
# What other symnoise commands write beside a run (`symnoise grid`, `symnoise generate`): kept, never deleted.
COMPANION_FILES = frozenset(
    {"cell.yaml", "stages.json", "failure.json", "model_outputs.json", "model_outputs.partial.jsonl", "eval"}
)


class RunLockedError(ConfigError):
    """Another process holds the run directory's lock."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------------ lock
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holder_text(holder: dict[str, Any]) -> str:
    return (
        f"PID {holder.get('pid', '?')} on host {holder.get('host', '?')}, started "
        f"{holder.get('started_at', 'at an unknown time')}"
    )


class RunLock:
    """An exclusive lock on ``RUN/symnoise.lock`` held while a run writes into ``RUN``; see the module docstring."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self.fd: int | None = None
        self.created = False  # this process made the lock file (so a refused run can leave no trace)

    def _read_holder(self) -> dict[str, Any]:
        try:
            text = self.path.read_text(encoding="utf-8")
            holder = json.loads(text) if text.strip() else {}
        except (OSError, ValueError):
            return {}
        return holder if isinstance(holder, dict) else {}

    def acquire(self) -> RunLock:
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started_at": _now()}
        self.created = not self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            locked_by_os = self._flock(fd)
        except BaseException:
            os.close(fd)
            raise
        previous = self._read_holder()
        if not locked_by_os and previous and previous.get("pid") != me["pid"]:
            alive = previous.get("host") != me["host"] or _pid_alive(int(previous.get("pid", 0)))
            if alive:
                os.close(fd)
                raise RunLockedError(
                    f"training.output_dir: {self.path.parent} is in use by another symnoise run "
                    f"({_holder_text(previous)}); this file system has no locks, so if that run has ended, "
                    f"delete {self.path} and retry"
                )
        if previous:
            logger.warning(
                "took over the lock %s left by a run that is no longer running (%s)",
                self.path,
                _holder_text(previous),
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode("utf-8"), 0)
        os.fsync(fd)
        self.fd = fd
        return self

    def _flock(self, fd: int) -> bool:
        """True when the OS lock is held; False when the file system has none; raises when another holds it."""
        try:
            import fcntl
        except ImportError:  # not a POSIX system: the PID record is all there is
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                holder = self._read_holder()
                raise RunLockedError(
                    f"training.output_dir: {self.path.parent} is in use by another symnoise run "
                    f"({_holder_text(holder)}); wait for it to end or stop it, or choose another "
                    "output_dir"
                ) from None
            if error.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                logger.warning(
                    "%s: the file system does not support locks; checking the PID record only", self.path
                )
                return False
            raise
        return True

    def release(self) -> None:
        """Empty the record (an empty lock file is not a stale lock) and drop the lock."""
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)
        except OSError:
            pass
        os.close(self.fd)  # closing the descriptor releases the flock
        self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


# ------------------------------------------------------------------------------------------ start record
def data_fingerprint(path: str) -> dict[str, Any] | None:
    """Size and SHA-256 of a local data file; None for a hub dataset (its revision is not pinned here)."""
    file = Path(path).expanduser()
    if not file.is_file():
        return None
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"path": str(file.resolve()), "bytes": file.stat().st_size, "sha256": digest.hexdigest()}


SAMPLED_BLOCKS, BLOCK_BYTES = 64, 1 << 16


def _sampled_sha256(file: Path) -> str:
    """SHA-256 of a whole small file, or of `SAMPLED_BLOCKS` blocks spread evenly over a large one (4 MiB read
    however large the model): any rewrite of the weights changes some of them (a LoRA merge into the attention
    projections alone changes ~15 % of a LLaMA file, and all 64 blocks miss it with probability 3e-5)."""
    size = file.stat().st_size
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        if size <= SAMPLED_BLOCKS * BLOCK_BYTES:
            digest.update(handle.read())
        else:
            for k in range(SAMPLED_BLOCKS):
                handle.seek(k * (size - BLOCK_BYTES) // (SAMPLED_BLOCKS - 1))
                digest.update(handle.read(BLOCK_BYTES))
    return digest.hexdigest()


def model_fingerprint(name: str, revision: str | None) -> dict[str, Any]:
    """What identifies the base model: a local folder's config.json hash and each weight file's size and sampled
    hash, or the commit a hub name resolves to (None until it is in the cache)."""
    folder = Path(name).expanduser()
    if not folder.is_dir():
        return {"hub": name, "revision": revision, "commit": hub_commit(name, revision)}
    files = {}
    for file in sorted(folder.iterdir()):
        if file.is_file() and (file.name.endswith(WEIGHT_SUFFIXES) or file.name == "config.json"):
            files[file.name] = {"bytes": file.stat().st_size, "sha256": _sampled_sha256(file)}
    return {"path": str(folder.resolve()), "files": files}


def record_model_commit(run_dir: Path, config: TrainConfig) -> None:
    """Fill in the commit of a hub model that was downloaded by this run (it was not cached at the start)."""
    record = read_start_record(run_dir)
    model = (record or {}).get("model") or {}
    if "hub" in model and model.get("commit") is None:
        model["commit"] = hub_commit(config.model.name, config.model.revision)
        if model["commit"] is not None:
            write_start_record(run_dir, record)


def pinned_revision(run_dir: Path, config: TrainConfig) -> str | None:
    """On resume: the commit of the hub model the run started with, when ``model.revision`` does not already
    name it; loading that commit keeps a moved branch from mixing two models (or two tokenizers) in one run."""
    model = (read_start_record(run_dir) or {}).get("model") or {}
    commit = model.get("commit")
    if "hub" not in model or commit is None or config.model.revision == commit:
        return None
    return commit


def _model_changes(before: dict[str, Any] | None, config: TrainConfig) -> list[Change]:
    if not before or "files" not in before:
        return []
    after = model_fingerprint(config.model.name, config.model.revision)
    changed = sorted(
        name
        for name in before["files"].keys() | after.get("files", {}).keys()
        if before["files"].get(name) != after.get("files", {}).get(name)
    )
    if not changed:
        return []
    return [
        Change(
            f"model files ({config.model.name})",
            "as at the start",
            f"changed since: {', '.join(changed)}",
            False,
        )
    ]


def training_data_paths(config: TrainConfig) -> list[str]:
    """Every training data source (``data.path``, or each entry of a ``data.datasets`` mixture) that is set."""
    return [path for path in data_paths(config) if path]


def start_record(config: TrainConfig) -> dict[str, Any]:
    files = [data_fingerprint(path) for path in training_data_paths(config)]
    return {
        "symnoise_version": __version__,
        "started_at": _now(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "processes": world_size(),
        "config": config.to_dict(),
        "data": files[0] if len(files) == 1 else None,
        "data_files": files,
        "model": model_fingerprint(config.model.name, config.model.revision),
        "resumes": [],
    }


def read_start_record(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / START_RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        raise ConfigError(
            f"{path} is not valid JSON; it records what this run was started with, so the run "
            "cannot be checked: restore it, or use --overwrite to start again"
        ) from None
    return record if isinstance(record, dict) else None


def write_start_record(run_dir: Path, record: dict[str, Any]) -> None:
    path = Path(run_dir) / START_RECORD
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------ comparison
@dataclass(frozen=True)
class Change:
    field: str
    old: Any
    new: Any
    harmless: bool

    def __str__(self) -> str:
        if self.field.startswith(("data file content", "model files")):  # already described
            return f"{self.field}: {self.old} -> {self.new}"
        return f"{self.field}: {self.old!r} -> {self.new!r}"


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


_ABSENT = "(not set)"


def _normalised(recorded: dict[str, Any]) -> dict[str, Any]:
    """The recorded config with today's defaults filled in (a field added since then is not a change)."""
    try:
        return validate_config(recorded, "recorded config").to_dict()
    except ConfigError:
        return recorded


def config_changes(recorded: dict[str, Any], current: TrainConfig) -> list[Change]:
    """Every field whose value differs between the recorded config and ``current``, each classified."""
    old, new = _flatten(_normalised(recorded)), _flatten(current.to_dict())
    changes = []
    for field in sorted(old.keys() | new.keys()):
        before, after = old.get(field, _ABSENT), new.get(field, _ABSENT)
        if before == after:
            continue
        if (
            field == "training.output_dir"
            and Path(str(before)).expanduser().resolve() == Path(str(after)).expanduser().resolve()
        ):
            continue
        if (
            isinstance(before, (int, float))
            and isinstance(after, (int, float))
            and not isinstance(before, bool)
            and not isinstance(after, bool)
            and float(before) == float(after)
        ):
            continue
        changes.append(Change(field, before, after, field in HARMLESS_FIELDS))
    return changes


def run_changes(record: dict[str, Any], config: TrainConfig) -> list[Change]:
    """Config changes plus the data file's content and the number of processes, against a start record."""
    changes = config_changes(record.get("config") or {}, config)
    recorded = record.get("data_files") or [record.get("data")]
    for before, path in zip(recorded, training_data_paths(config), strict=False):
        if not (before and before.get("sha256")):
            continue
        after = data_fingerprint(path)
        if after and after["sha256"] != before["sha256"]:
            what = "data file content" if len(recorded) == 1 else f"data file content ({path})"
            changes.append(
                Change(
                    what,
                    f"sha256 {before['sha256'][:12]}… ({before['bytes']} bytes)",
                    f"sha256 {after['sha256'][:12]}… ({after['bytes']} bytes)",
                    False,
                )
            )
    changes += _model_changes(record.get("model"), config)
    if record.get("processes") not in (None, world_size()):
        changes.append(Change("processes (WORLD_SIZE)", record["processes"], world_size(), False))
    return changes


def refuse_training_changes(changes: list[Change], where: Path, what: str = "--resume") -> None:
    """Raise a `ConfigError` listing every change that alters training; log the harmless ones."""
    blocking = [c for c in changes if not c.harmless]
    if blocking:
        lines = "\n".join(f"  {c}" for c in blocking)
        raise ConfigError(
            f"{what}: the config differs from the one {where} was started with, in fields that change training "
            f"(recorded -> now):\n{lines}\nResuming would mix two configs in one run; rerun with the recorded "
            f"values (see {where / START_RECORD}), or start a new run in another output_dir"
        )
    for change in changes:
        logger.info("%s: %s (does not change training; allowed)", what, change)


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
        marked = START_RECORD in names or "symnoise_run.json" in names
        ours, foreign = [], []
        for path in entries:
            if path.name in COMPANION_FILES:
                continue
            structural = path.name == LOCK_FILE or path.name.startswith(("tmp-", ".write_test_"))
            (ours if structural or (marked and _is_train_file(path.name)) else foreign).append(path)
        return cls(ours, foreign, marked)


def _finished(run_dir: Path) -> bool:
    return (
        (run_dir / "model.safetensors").exists()
        or (run_dir / "adapter_model.safetensors").exists()
        or (run_dir / "model.safetensors.index.json").exists()
    )


def describe_run(run_dir: Path) -> str:
    if _finished(run_dir):
        return "a finished run"
    checkpoint = last_complete_checkpoint(run_dir)
    if checkpoint is not None:
        return f"an unfinished run with {checkpoint.name}"
    return "an unfinished run that stopped before its first checkpoint"


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
    created: bool = False  # this run created the directory

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
            _remove_traces(self.run_dir, self.lock, self.created)


def _remove_traces(run_dir: Path, lock: RunLock, created_dir: bool) -> None:
    """After a refused or failed start: remove the lock file this run made, and the directory if it made it and
    nothing else is in it."""
    if lock.created:
        lock.path.unlink(missing_ok=True)
    if created_dir and run_dir.is_dir() and not any(run_dir.iterdir()):
        run_dir.rmdir()


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
    created = not run_dir.exists()
    if main:
        make_output_dir(run_dir)
        probe_writable(run_dir)
        lock = RunLock(run_dir).acquire()
    else:
        lock = None
    try:
        effective = _decide(config, run_dir, resume, overwrite, main)
    except BaseException:
        if lock is not None:
            lock.release()
            _remove_traces(run_dir, lock, created)
        raise
    return Claim(run_dir, effective, lock, fresh=main and not resume, created=created)


def training_began(run_dir: Path) -> bool:
    """Whether a run in ``run_dir`` got as far as training: it logged, saved, or wrote a model.

    A run that stopped earlier (a bad config found after the start record was written, a kill while the model
    loaded) left only files that the next run writes again, so it holds nothing to lose or to mix with.
    """
    return (
        _finished(run_dir)
        or any(
            (run_dir / name).exists()
            for name in ("metrics.jsonl", "runs", "nonfinite_steps.jsonl", "train_summary.json")
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
            hint = (
                "pass --resume to continue it"
                if checkpoint is not None and not _finished(run_dir)
                else "pass --resume to start it again from step 0 with the config it was started with"
                if checkpoint is None and record is not None
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
        record = _legacy_record(run_dir)
    changes = run_changes(record, config)
    refuse_training_changes(changes, run_dir)
    record.setdefault("resumes", []).append(
        {
            "at": _now(),
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "from": checkpoint.name if checkpoint is not None else "step 0 (no checkpoint was written)",
            "harmless_changes": {c.field: [c.old, c.new] for c in changes},
        }
    )
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


def _legacy_record(run_dir: Path) -> dict[str, Any]:
    import yaml

    path = run_dir / "config.yaml"
    if not path.is_file():
        raise ConfigError(
            f"--resume: {run_dir} has neither {START_RECORD} nor config.yaml, so the config it was "
            "started with is unknown and a changed config could not be detected; restore "
            "config.yaml, or start a new run in another output_dir"
        )
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    return {
        "config": config if isinstance(config, dict) else {},
        "data": None,
        "processes": None,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(path.stat().st_mtime)),
        "resumes": [],
    }
