"""Open LLM Leaderboard (v1) scores of a checkpoint through lm-evaluation-harness: ARC, HellaSwag, MMLU.

The leaderboard settings (NEFTune and SymNoise report them): ARC-Challenge test, 25-shot, ``acc_norm``; HellaSwag
validation, 10-shot, ``acc_norm``; MMLU test, 5-shot, ``acc``. MMLU is reported both ways, named: ``value`` is the
mean over its 57 subjects without weighting (Open LLM Leaderboard v1, the papers' Table 3), ``size_weighted_value``
the mean weighted by subject size (the harness's own ``mmlu`` group, ``weight_by_size: True``).

Two ways to get the data:

* offline: the local copies in a data folder laid out like ``../shared/data`` (``arc/``, ``hellaswag/``,
  ``mmlu/``), converted to JSON Lines and task YAMLs by `symnoise.evaluation.leaderboard_data`;
* online: the harness's registered tasks ``arc_challenge``, ``hellaswag`` and ``mmlu``, downloaded from the hub.

`symnoise leaderboard` and `symnoise grid` choose with `symnoise.evaluation.sources`: offline when a data folder is
named (``--data-dir``, a grid's ``data_dir``, or ``$SYMNOISE_DATA_DIR``), else online.

Everything that can be wrong with the request (task names, data folder, files) is checked before the model loads,
by `symnoise.evaluation.leaderboard_tasks`, which also holds the task table. This module runs the harness and
reads its scores.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..quiet import LM_EVAL_LOGGER, LM_EVAL_TRUNCATION, dropped_messages
from .leaderboard_data import write_offline_tasks
from .leaderboard_tasks import (
    LEADERBOARD_TASKS,
    LeaderboardError,
    LeaderboardTask,
    check_checkpoint,
    check_hub_datasets,
    find_data_dir,
    offline_task_names,
    resolve_tasks,
)
from .sources import HELLASWAG_TRAIN, MMLU_SUBJECTS


@dataclass
class TaskScore:
    """The reported number of one task. For MMLU ``value`` is the unweighted mean of ``subjects`` (Leaderboard v1)
    and ``size_weighted_value`` the mean weighted by their sizes (the harness's ``mmlu`` group); ``n_docs`` is
    their sum. ``fewshot_split``: where the few-shot examples came from."""

    task: str
    n_shot: int
    metric: str
    value: float
    stderr: float | None
    n_docs: int
    subjects: dict[str, dict[str, Any]] = field(default_factory=dict)
    aggregation: str | None = None
    size_weighted_value: float | None = None
    size_weighted_stderr: float | None = None
    fewshot_split: str | None = None


# --------------------------------------------------------------------------------------------------- evaluation


def _number(value: Any) -> float | None:
    """The harness writes "N/A" for an undefined stderr (one document)."""
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _score(
    results: dict[str, Any], task: LeaderboardTask, online: bool, fewshot_split: str | None = None
) -> TaskScore:
    """Pick the leaderboard metric of one task out of ``simple_evaluate``'s results (shots as the harness ran them)."""
    key = f"{task.metric},none"
    stderr_key = f"{task.metric}_stderr,none"
    if task.name != "mmlu":
        name = task.harness_name if online else offline_task_names(task.name)[0]
        res = results["results"][name]
        return TaskScore(
            task.name,
            int(results["n-shot"][name]),
            task.metric,
            float(res[key]),
            _number(res[stderr_key]),
            int(results["n-samples"][name]["effective"]),
            fewshot_split=fewshot_split,
        )
    names = [f"mmlu_{s}" for s in MMLU_SUBJECTS] if online else offline_task_names("mmlu")
    subjects = {
        s: {
            "value": float(results["results"][n][key]),
            "stderr": _number(results["results"][n][stderr_key]),
            "n_docs": int(results["n-samples"][n]["effective"]),
            "n_shot": int(results["n-shot"][n]),
        }
        for s, n in zip(MMLU_SUBJECTS, names, strict=True)
    }
    return TaskScore(
        "mmlu",
        int(results["n-shot"][names[0]]),
        task.metric,
        n_docs=sum(v["n_docs"] for v in subjects.values()),
        subjects=subjects,
        fewshot_split="dev",
        **mmlu_aggregates(subjects),
    )


def mmlu_aggregates(subjects: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """MMLU over its subjects, both ways, with the harness's own aggregation functions: the unweighted mean
    (Leaderboard v1; stderr of a mean of independent means) and the size-weighted mean (the ``mmlu`` group; pooled
    stderr)."""
    from lm_eval.api.metrics import aggregate_subtask_metrics, pooled_sample_stderr

    values = [v["value"] for v in subjects.values()]
    errors = [v["stderr"] for v in subjects.values()]
    sizes = [v["n_docs"] for v in subjects.values()]
    known = None not in errors
    return {
        "value": aggregate_subtask_metrics(values, sizes, weight_by_size=False),
        "stderr": math.sqrt(sum(e * e for e in errors)) / len(errors) if known else None,
        "aggregation": "unweighted mean of the 57 subjects (Open LLM Leaderboard v1)",
        "size_weighted_value": aggregate_subtask_metrics(values, sizes, weight_by_size=True),
        "size_weighted_stderr": float(pooled_sample_stderr(errors, sizes))
        if known and sum(sizes) > len(sizes)
        else None,
    }


def _fewshot_split(task: str, online: bool, data_dir: Path | None) -> str:
    """Where the few-shot examples of ``task`` come from in this run."""
    if task == "hellaswag" and not online and not (Path(data_dir) / HELLASWAG_TRAIN).is_file():
        return "validation (no train split here; the evaluated item excluded)"
    return {"arc": "train", "hellaswag": "train", "mmlu": "dev"}[task]


def run_leaderboard(
    checkpoint: Any,
    tasks: str | Sequence[str] = tuple(LEADERBOARD_TASKS),
    *,
    data_dir: str | Path | None = None,
    online: bool = False,
    limit: int | None = None,
    batch_size: int = 1,
    device: str | None = None,
    num_fewshot: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Score ``checkpoint`` (a ``save_pretrained`` folder, a hub name, or a ready ``lm_eval`` LM object such as an
    ``HFLM`` wrapping a loaded model and tokenizer) on the leaderboard tasks.

    ``limit`` scores the first N documents of each task (of each MMLU subject): for quick checks only.
    ``num_fewshot`` overrides the leaderboard shots per task name, e.g. ``{"arc": 2}`` (tests, ablations).
    Returns a JSON-ready report: per task the metric value, its stderr, shots and documents, and the average;
    ``truncated_requests`` counts the requests longer than the model's context, which the harness cut from the
    left (its per-request "Combined length" warning is left out of the log; ``truncation_example`` is the first).
    """
    specs = resolve_tasks(tasks)
    shots = {t.name: t.num_fewshot for t in specs} | dict(num_fewshot or {})
    if online and data_dir is not None:
        raise LeaderboardError("give either a data folder (offline) or online, not both")
    if limit is not None and limit < 1:
        raise LeaderboardError(f"limit must be a positive number of documents, got {limit}")
    root = None if online else find_data_dir(specs, data_dir)
    if online:
        check_hub_datasets(specs)
    if isinstance(checkpoint, (str, os.PathLike)):
        check_checkpoint(str(checkpoint))

    import lm_eval
    import torch
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    if isinstance(checkpoint, (str, os.PathLike)):
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        lm = HFLM(pretrained=str(checkpoint), batch_size=batch_size, device=device, use_kernels=False)
    else:
        lm = checkpoint
    scores = []
    with (
        tempfile.TemporaryDirectory(prefix="symnoise-leaderboard-") as work,
        dropped_messages(LM_EVAL_LOGGER, LM_EVAL_TRUNCATION) as truncation,
        _no_git_lookup(),
    ):
        if online:
            manager = TaskManager()
        else:
            task_dir = write_offline_tasks(root, specs, work, shots)
            manager = TaskManager(include_path=str(task_dir), include_defaults=False)
        for task in specs:
            names = [task.harness_name] if online else offline_task_names(task.name)
            results = lm_eval.simple_evaluate(  # the offline task files carry their shots
                model=lm,
                tasks=names,
                num_fewshot=shots[task.name] if online else None,
                limit=limit,
                task_manager=manager,
                log_samples=False,
            )
            scores.append(_score(results, task, online, _fewshot_split(task.name, online, root)))
    return {
        "checkpoint": str(checkpoint)
        if isinstance(checkpoint, (str, os.PathLike))
        else type(checkpoint).__name__,
        "mode": "online" if online else "offline",
        "data_dir": None if root is None else str(root),
        "limit": limit,
        "lm_eval_version": getattr(lm_eval, "__version__", None),
        "tasks": {s.task: asdict(s) for s in scores},
        "average": sum(s.value for s in scores) / len(scores),
        "truncated_requests": truncation.dropped,
        "truncation_example": truncation.first,
    }


@contextmanager
def _no_git_lookup() -> Iterator[None]:
    """lm-evaluation-harness records the git commit of the current folder in its results, which the report does
    not keep; outside a git repository git printed "fatal: not a git repository" twice per task. Not asked here."""
    import lm_eval.evaluator as evaluator

    original = getattr(evaluator, "get_git_commit_hash", None)
    if original is None:  # a harness version without it
        yield
        return
    evaluator.get_git_commit_hash = lambda: None
    try:
        yield
    finally:
        evaluator.get_git_commit_hash = original


def format_table(report: dict[str, Any]) -> str:
    """The report as a plain-text table (values in %), one row per task and the average last."""
    header = f"{'task':<10} {'n-shot':>6} {'metric':<9} {'value %':>8} {'stderr %':>9} {'docs':>6}"
    lines = [header, "-" * len(header)]
    for s in report["tasks"].values():
        stderr = "n/a" if s["stderr"] is None else f"{100 * s['stderr']:.2f}"
        lines.append(
            f"{s['task']:<10} {s['n_shot']:>6} {s['metric']:<9} {100 * s['value']:>8.2f} {stderr:>9} "
            f"{s['n_docs']:>6}"
        )
        if s.get("size_weighted_value") is not None:
            weighted = s["size_weighted_stderr"]
            weighted = "n/a" if weighted is None else f"{100 * weighted:.2f}"
            lines.append(
                f"{'  weighted':<10} {'':>6} {s['metric']:<9} {100 * s['size_weighted_value']:>8.2f} "
                f"{weighted:>9} {'':>6}  (by subject size, as the harness's mmlu group)"
            )
    lines.append(f"{'average':<10} {'':>6} {'':<9} {100 * report['average']:>8.2f}")
    return "\n".join(lines)
