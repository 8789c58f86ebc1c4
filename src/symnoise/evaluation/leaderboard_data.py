"""Local copies of the leaderboard data -> the harness's JSON Lines and task YAMLs (the offline leaderboard).

The files of a data folder laid out like ``../shared/data`` (``arc/``, ``hellaswag/``, ``mmlu/``; the list is in
`symnoise.evaluation.sources`) are converted to JSON Lines in the schemas of the hub datasets the harness uses, and
scored with the task definitions in ``lm_eval_tasks/`` (the harness's own prompts, targets and few-shot rules; see
the YAML comments for the one HellaSwag difference: few-shot examples from validation, the train split being absent).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from symnoise.evaluation.lm_eval_tasks.utils import split_context

from ..files import read_placed_json_rows, write_json_lines_atomic, write_text_atomic
from .leaderboard_tasks import LeaderboardError, LeaderboardTask, offline_task_names
from .sources import (
    ARC_FILES,
    HELLASWAG_TRAIN,
    HELLASWAG_VALIDATION,
    MMLU_SPLITS,
    MMLU_SUBJECTS,
    arc_file,
    mmlu_file,
)

TASKS_DIR = Path(__file__).with_name("lm_eval_tasks")


def read_arc(path: str | Path) -> list[dict[str, Any]]:
    """Official ARC JSONL -> rows in the hub ``allenai/ai2_arc`` schema the harness's ARC prompts read."""
    rows = []
    for place, item in read_placed_json_rows(path, LeaderboardError):
        choices = item["question"]["choices"]
        row = {
            "id": item["id"],
            "question": item["question"]["stem"],
            "choices": {"text": [c["text"] for c in choices], "label": [c["label"] for c in choices]},
            "answerKey": item["answerKey"],
        }
        if row["answerKey"] not in row["choices"]["label"]:
            raise LeaderboardError(f"{path}: {place}: answerKey {row['answerKey']!r} is not a choice label")
        rows.append(row)
    return rows


def read_hellaswag(path: str | Path) -> list[dict[str, Any]]:
    """The 6-lines-per-item text file (context, gold 0-3, four endings) -> rows ``{ind, activity_label, ctx_a,
    ctx_b, ctx, endings, label}`` (the hub's fields, ``ctx_a``/``ctx_b`` recovered by ``split_context``)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if len(lines) % 6:
        raise LeaderboardError(f"{path}: {len(lines)} lines, expected 6 per item (context, label, 4 endings)")
    rows = []
    for ind, start in enumerate(range(0, len(lines), 6)):
        ctx, label, *endings = lines[start : start + 6]
        if label.strip() not in {"0", "1", "2", "3"}:
            raise LeaderboardError(f"{path}:{start + 2}: label {label!r} is not one of 0-3")
        activity_label, ctx_a, ctx_b = split_context(ctx)
        rows.append(
            {
                "ind": ind,
                "activity_label": activity_label,
                "ctx_a": ctx_a,
                "ctx_b": ctx_b,
                "ctx": ctx,
                "endings": endings,
                "label": label.strip(),
            }
        )
    return rows


def read_hellaswag_hub_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """A HellaSwag split in the hub / rowanz schema (JSON Lines) -> the rows :func:`read_hellaswag` writes."""
    rows = []
    for index, (place, item) in enumerate(read_placed_json_rows(path, LeaderboardError)):
        missing = [k for k in ("activity_label", "ctx_a", "ctx_b", "endings", "label") if k not in item]
        if missing or len(item["endings"]) != 4 or str(item["label"]) not in {"0", "1", "2", "3"}:
            raise LeaderboardError(
                f"{path}: {place}: expected a HellaSwag row (activity_label, ctx_a, ctx_b, "
                f"4 endings, label 0-3){'; missing ' + ', '.join(missing) if missing else ''}"
            )
        rows.append(
            {
                "ind": int(item.get("ind", index)),
                "activity_label": item["activity_label"],
                "ctx_a": item["ctx_a"],
                "ctx_b": item["ctx_b"],
                "ctx": item.get("ctx", item["ctx_a"] + " " + item["ctx_b"]),
                "endings": item["endings"],
                "label": str(item["label"]),
            }
        )
    return rows


def read_mmlu(path: str | Path, subject: str) -> list[dict[str, Any]]:
    """Headerless MMLU CSV (question, A, B, C, D, answer letter) -> rows in the hub ``cais/mmlu`` schema."""
    rows = []
    with open(path, encoding="utf-8", newline="") as fh:
        for number, fields in enumerate(csv.reader(fh), 1):
            if len(fields) != 6 or fields[5] not in {"A", "B", "C", "D"}:
                raise LeaderboardError(
                    f"{path}: line {number}: expected question, A, B, C, D, answer letter A-D"
                )
            rows.append(
                {
                    "question": fields[0],
                    "subject": subject,
                    "choices": fields[1:5],
                    "answer": "ABCD".index(fields[5]),
                }
            )
    return rows


def _task_yaml(path: Path, base: str, task: str, data_dir: Path, files: dict[str, str], **extra: Any) -> None:
    """A task YAML that includes a shipped definition and says where its data lives."""
    config = {
        "include": str(TASKS_DIR / base),
        "task": task,
        **extra,
        "dataset_kwargs": {
            "data_dir": str(data_dir),
            "data_files": files,
            "cache_dir": str(data_dir / "cache"),
        },
    }
    write_text_atomic(path, yaml.safe_dump(config, sort_keys=False))


def _write_arc(data_dir: Path, jsonl: Path, task_dir: Path, shots: int) -> None:
    files = {split: f"arc_challenge_{split}.jsonl" for split in ARC_FILES}
    for split, name in files.items():
        write_json_lines_atomic(jsonl / name, read_arc(data_dir / arc_file(split)))
    base, [task] = "arc_challenge.yaml", offline_task_names("arc")
    _task_yaml(task_dir / base, base, task, jsonl, files, num_fewshot=shots)


# the harness's own split settings when the train split is there, so that even its sampler draws the same shots
HELLASWAG_SPLITS = {
    "training_split": "train",
    "validation_split": "validation",
    "test_split": None,
    "fewshot_split": None,
}


def _write_hellaswag(data_dir: Path, jsonl: Path, task_dir: Path, shots: int) -> None:
    write_json_lines_atomic(jsonl / "hellaswag.jsonl", read_hellaswag(data_dir / HELLASWAG_VALIDATION))
    files, splits = {"validation": "hellaswag.jsonl"}, {}
    if (data_dir / HELLASWAG_TRAIN).is_file():  # the harness's few-shot source
        train = read_hellaswag_hub_jsonl(data_dir / HELLASWAG_TRAIN)
        write_json_lines_atomic(jsonl / "hellaswag_train.jsonl", train)
        files["train"] = "hellaswag_train.jsonl"
        splits = HELLASWAG_SPLITS
    base, [task] = "hellaswag.yaml", offline_task_names("hellaswag")
    _task_yaml(task_dir / base, base, task, jsonl, files, num_fewshot=shots, **splits)


def _write_mmlu(data_dir: Path, jsonl: Path, task_dir: Path, shots: int) -> None:
    for subject, task in zip(MMLU_SUBJECTS, offline_task_names("mmlu"), strict=True):
        files = {split: f"mmlu/{subject}_{split}.jsonl" for split in MMLU_SPLITS}
        for split, name in files.items():
            write_json_lines_atomic(jsonl / name, read_mmlu(data_dir / mmlu_file(subject, split), subject))
        readable = subject.replace("_", " ")
        description = f"The following are multiple choice questions (with answers) about {readable}.\n\n"
        fields = {"task_alias": subject, "description": description, "num_fewshot": shots}
        _task_yaml(task_dir / f"mmlu_{subject}.yaml", "mmlu_template.yaml", task, jsonl, files, **fields)


WRITERS = {"arc": _write_arc, "hellaswag": _write_hellaswag, "mmlu": _write_mmlu}


def write_offline_tasks(
    data_dir: str | Path,
    tasks: Sequence[LeaderboardTask],
    work_dir: str | Path,
    num_fewshot: dict[str, int] | None = None,
) -> Path:
    """Convert the local data of ``tasks`` to JSON Lines and write their task YAMLs, with the leaderboard shots
    unless ``num_fewshot`` overrides them; returns the folder to give ``TaskManager(include_path=...)``."""
    data_dir, work = Path(data_dir), Path(work_dir)
    shots = {t.name: t.num_fewshot for t in tasks} | dict(num_fewshot or {})
    jsonl, task_dir = work / "data", work / "tasks"
    task_dir.mkdir(parents=True, exist_ok=True)
    for task in tasks:
        WRITERS[task.name](data_dir, jsonl, task_dir, shots[task.name])
    return task_dir
