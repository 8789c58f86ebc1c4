"""The Open LLM Leaderboard (v1) tasks and the checks of a request, made before any model loads.

Each task has our short name (``arc``, ``hellaswag``, ``mmlu``), the harness's name for it, the leaderboard's shots
and the metric it reports. A request is checked here: the task names, the local data folder (every file the tasks
read, as listed in `symnoise.evaluation.sources`), a local checkpoint path, and, without the hub (offline, or
unreachable), the hub datasets and hub checkpoint that are not cached: each is one error in seconds, where the
harness would retry for tens of seconds and end in a traceback.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..offline import (
    folder_listing,
    hub_commit,
    hub_dataset_cached,
    hub_problem,
    hub_remedy,
    path_like_parent,
)
from .sources import DATA_DIR_ENV, HARNESS_DATASETS, MMLU_SUBJECTS, required_files
from .sources import data_dir as named_data_dir


@dataclass(frozen=True)
class LeaderboardTask:
    """One leaderboard column: our short name, the harness's name for it, its shots and the reported metric."""

    name: str
    harness_name: str
    num_fewshot: int
    metric: str


LEADERBOARD_TASKS: dict[str, LeaderboardTask] = {
    "arc": LeaderboardTask("arc", "arc_challenge", 25, "acc_norm"),
    "hellaswag": LeaderboardTask("hellaswag", "hellaswag", 10, "acc_norm"),
    "mmlu": LeaderboardTask("mmlu", "mmlu", 5, "acc"),
}


class LeaderboardError(ValueError):
    """A request that cannot run (unknown task, missing data); the message says what is allowed or expected."""


def resolve_tasks(names: str | Sequence[str]) -> list[LeaderboardTask]:
    """``"arc,hellaswag"`` or a list of names -> the tasks, in the given order; unknown names are an error."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in names if n not in LEADERBOARD_TASKS]
    if unknown or not names:
        raise LeaderboardError(
            f"unknown task(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
            f"allowed: {', '.join(LEADERBOARD_TASKS)}"
        )
    return [LEADERBOARD_TASKS[n] for n in dict.fromkeys(names)]


def offline_task_names(task: str) -> list[str]:
    """The harness task names of the offline definitions of one leaderboard task."""
    if task == "mmlu":
        return [f"symnoise_mmlu_{s}" for s in MMLU_SUBJECTS]
    return [f"symnoise_{LEADERBOARD_TASKS[task].harness_name}"]


def default_data_dirs() -> list[Path]:
    """The data folder used when none is given: ``$SYMNOISE_DATA_DIR`` (see `symnoise.evaluation.sources`)."""
    folder = named_data_dir()
    return [folder] if folder is not None else []


def find_data_dir(tasks: Sequence[LeaderboardTask], data_dir: str | Path | None = None) -> Path:
    """The data folder to use, checked to hold every file the tasks need.

    A given ``data_dir`` must be complete; otherwise the first complete folder of :func:`default_data_dirs` is used.
    """
    needed = [f for t in tasks for f in required_files(t.name)]
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        if not root.is_dir():
            raise LeaderboardError(f"data folder not found: {root}")
        missing = [f for f in needed if not (root / f).is_file()]
        if missing:
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise LeaderboardError(
                f"data folder {root} lacks {', '.join(missing[:5])}{more}; expected the layout of "
                "../shared/data (arc/ARC-Challenge/*.jsonl, hellaswag/hellaswag_val_full.txt, mmlu/{dev,test}/*.csv)"
            )
        return root
    candidates = default_data_dirs()
    for root in candidates:
        if all((root / f).is_file() for f in needed):
            return root
    where = f"in {', '.join(map(str, candidates))}" if candidates else "($SYMNOISE_DATA_DIR is not set)"
    raise LeaderboardError(
        f"no local data for {', '.join(t.name for t in tasks)} {where}; "
        "pass a data folder (--data-dir) or use the hub datasets (--online)"
    )


def check_hub_datasets(tasks: Sequence[LeaderboardTask]) -> None:
    """Online, the harness downloads each task's hub dataset: when one is not cached and the hub cannot be used,
    say which and how to give the data locally."""
    missing = [HARNESS_DATASETS[t.name] for t in tasks if not hub_dataset_cached(HARNESS_DATASETS[t.name])]
    problem = hub_problem(datasets=True) if missing else None
    if problem is None:
        return
    names = ", ".join(t.name for t in tasks if HARNESS_DATASETS[t.name] in missing)
    raise LeaderboardError(
        f"the hub dataset{'s' if len(missing) > 1 else ''} {', '.join(missing)} ({names}) "
        f"{'are' if len(missing) > 1 else 'is'} not in the Hugging Face cache and cannot be downloaded now: "
        f"{problem}. Give the data locally: --data-dir DIR or {DATA_DIR_ENV}=DIR, a folder laid out like "
        "../shared/data (arc/ARC-Challenge/*.jsonl, hellaswag/hellaswag_val_full.txt, mmlu/{dev,test}/*.csv); "
        f"or {hub_remedy(problem)}"
    )


def check_checkpoint(checkpoint: str) -> None:
    """Reject a checkpoint that names a local path which does not exist, and a hub name that is not cached when
    the hub cannot be used; a path-like name (``runs/x`` beside a ``runs/`` folder) is named as a path first."""
    path = Path(checkpoint).expanduser()
    looks_local = path.is_absolute() or checkpoint.startswith((".", "~")) or checkpoint.count("/") > 1
    if looks_local and not path.exists():
        raise LeaderboardError(
            f"checkpoint not found: {checkpoint} (give a folder written by save_pretrained or a hub model name)"
        )
    if path.exists() or hub_commit(checkpoint) is not None:
        return
    problem = hub_problem()
    if problem is None:
        return
    parent = path_like_parent(checkpoint)
    local = f"there is no local folder {checkpoint} ({folder_listing(parent)}), and " if parent else ""
    raise LeaderboardError(
        f"checkpoint {checkpoint}: {local}it is not a local folder nor a hub model in the Hugging Face cache, "
        f"and it cannot be downloaded now: {problem}. Give a folder written by save_pretrained, or "
        f"{hub_remedy(problem)}"
    )
