"""A grid cell's stage bookkeeping: which stages it goes through, which are finished, and how it last failed.

``CELL/stages.json`` holds one entry per finished stage (when, how long, what it measured), rewritten atomically
after each stage, so a kill at any moment leaves every finished stage marked and nothing else.
``CELL/failure.json`` holds the stage that failed last and its error, removed when the cell later finishes.
The runner (`symnoise.grid.runner`) writes both; the summary (`symnoise.grid.summary`) and ``--check`` read them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..files import read_json, write_json_atomic
from ..layout import RunLayout
from .cells import Cell
from .spec import Grid


@dataclass
class CellOutcome:
    """What one run of a cell did: its status (finished | failed), the stages it ran and skipped, its error."""

    cell: str
    status: str  # finished | failed
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    error: str | None = None
    stage: str | None = None


# Each evaluation stage, in the order a cell runs them, and the evaluation field that turns it on.
EVALUATION_STAGES = (
    ("generate", "prompts"),
    ("reference_loss", "reference_loss"),
    ("stats", "prompts"),
    ("analyze", "analyze"),
    ("judge", "judge"),
    ("leaderboard", "leaderboard"),
)


def planned_stages(grid: Grid) -> list[str]:
    """The stages every cell of this grid goes through, in order: training, then each evaluation it asks for."""
    evaluation = grid.spec.evaluation
    return ["train"] + [stage for stage, field_name in EVALUATION_STAGES if getattr(evaluation, field_name)]


def read_stages(directory: Path) -> dict[str, Any]:
    """The finished stages recorded in ``directory/stages.json`` (empty when there is none)."""
    path = RunLayout(directory).stages
    return read_json(path) if path.is_file() else {}


def mark_stage(directory: Path, stage: str, info: dict[str, Any], seconds: float) -> None:
    """Record ``stage`` as finished in ``directory/stages.json``, with ``info`` and how long it took."""
    stages = read_stages(directory)
    stages[stage] = {
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(seconds, 2),
        **info,
    }
    write_json_atomic(RunLayout(directory).stages, stages)


def is_finished(grid: Grid, cell: Cell) -> bool:
    """Whether every planned stage of the cell is marked finished."""
    return set(planned_stages(grid)) <= set(read_stages(cell.run_dir))


def evaluation_fingerprint(grid: Grid) -> str:
    """A short hash of the evaluation settings, stored with every evaluation stage. The data folder is left out:
    it says where the same named data is read from, not what is computed."""
    text = json.dumps(grid.spec.evaluation.model_dump(mode="json", exclude={"data_dir"}), sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- failures


def write_failure(directory: Path, stage: str | None, error: str, traceback: str) -> None:
    """Record the stage that failed and its error in ``directory/failure.json``."""
    write_json_atomic(RunLayout(directory).failure, {"stage": stage, "error": error, "traceback": traceback})


def read_failure(directory: Path) -> dict[str, Any] | None:
    """The last failure recorded in ``directory/failure.json`` (None when the cell has none)."""
    path = RunLayout(directory).failure
    return read_json(path) if path.is_file() else None


def clear_failure(directory: Path) -> None:
    """Remove the failure record once the cell has finished."""
    RunLayout(directory).failure.unlink(missing_ok=True)
