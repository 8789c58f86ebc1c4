"""What a run was started with, and whether a new config may continue it.

``RUN/run_start.json`` holds the resolved config, a hash of each data file, the base model's identity (a local
folder's config and sampled weight hashes; a hub model's commit) and the number of processes, written once when
the run starts (before the data is read). ``--resume`` loads a hub model at the recorded commit, refuses a local
model whose files changed, and compares the new config with the record: a difference that changes training
(noise, data, model, LoRA, optimiser, schedule, batch, steps) is refused, naming each field with both values; a
difference in a field that does not change the result (`HARMLESS_FIELDS`) is allowed, logged, and appended to
the record's ``resumes`` list. A grid (`symnoise.grid.runner`) makes the same comparison before it resumes a cell.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from .. import __version__
from ..files import write_json_atomic
from ..layout import CONFIG_FILE, START_RECORD, RunLayout
from ..offline import hub_commit
from .config import ConfigError, TrainConfig, validate_config
from .distributed import world_size
from .metrics import data_paths
from .preflight import WEIGHT_SUFFIXES

logger = logging.getLogger("symnoise.train")

# Fields that change how a run is logged, saved or evaluated but not what it trains. Every other field (and any
# field added later) counts as changing training.
HARMLESS_FIELDS = frozenset(
    {
        "training.output_dir",
        "training.logging_steps",
        "training.save_steps",
        "training.save_total_limit",
        "training.save_model",
        "training.eval_steps",
        "training.report_to",
        "training.dataloader_num_workers",
        "training.on_nonfinite",
        "training.gradient_checkpointing",
        "training.trained_logits_only",
        "data.eval_path",
    }
)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


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
    """What a fresh run records before it reads its data: the config, each data file's and the model's
    fingerprint, the number of processes, and an empty list of resumes."""
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
    """The run's start record (None when it has none); a record that is not JSON raises `ConfigError`."""
    path = RunLayout(run_dir).start_record
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
    """Replace the run's start record, atomically."""
    write_json_atomic(RunLayout(run_dir).start_record, record)


def record_resume(record: dict[str, Any], checkpoint: Path | None, changes: list[Change]) -> None:
    """Append this resume (when, by whom, from which checkpoint, with which harmless changes) to ``record``."""
    record.setdefault("resumes", []).append(
        {
            "at": _now(),
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "from": checkpoint.name if checkpoint is not None else "step 0 (no checkpoint was written)",
            "harmless_changes": {c.field: [c.old, c.new] for c in changes},
        }
    )


def legacy_record(run_dir: Path) -> dict[str, Any]:
    """A start record for a run from a version that wrote none: its config.yaml is the recorded config."""
    path = RunLayout(run_dir).config
    if not path.is_file():
        raise ConfigError(
            f"--resume: {run_dir} has neither {START_RECORD} nor {CONFIG_FILE}, so the config it was "
            f"started with is unknown and a changed config could not be detected; restore "
            f"{CONFIG_FILE}, or start a new run in another output_dir"
        )
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    return {
        "config": config if isinstance(config, dict) else {},
        "data": None,
        "processes": None,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(path.stat().st_mtime)),
        "resumes": [],
    }


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
            f"values (see {RunLayout(where).start_record}), or start a new run in another output_dir"
        )
    for change in changes:
        logger.info("%s: %s (does not change training; allowed)", what, change)
