"""Open LLM Leaderboard (v1) scores of a checkpoint through lm-evaluation-harness: ARC, HellaSwag, MMLU.

The leaderboard settings (NEFTune and SymNoise report them): ARC-Challenge test, 25-shot, ``acc_norm``; HellaSwag
validation, 10-shot, ``acc_norm``; MMLU test, 5-shot, ``acc``. MMLU is reported both ways, named: ``value`` is the
mean over its 57 subjects without weighting (Open LLM Leaderboard v1, the papers' Table 3), ``size_weighted_value``
the mean weighted by subject size (the harness's own ``mmlu`` group, ``weight_by_size: True``).

Two ways to get the data:

* offline: the local copies in a data folder laid out like ``../shared/data`` (``arc/``, ``hellaswag/``,
  ``mmlu/``). They are converted to JSON Lines in the schemas of the hub datasets the harness uses, and scored with
  the task definitions in ``lm_eval_tasks/`` (the harness's own prompts, targets and few-shot rules; see the YAML
  comments for the one HellaSwag difference: few-shot examples from validation, the train split being absent);
* online: the harness's registered tasks ``arc_challenge``, ``hellaswag`` and ``mmlu``, downloaded from the hub.

`symnoise leaderboard` and `symnoise grid` choose with `symnoise.evaluation.sources`: offline when a data folder is
named (``--data-dir``, a grid's ``data_dir``, or ``$SYMNOISE_DATA_DIR``), else online.

Everything that can be wrong with the request (task names, data folder, files) is checked before the model loads.
"""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from symnoise.evaluation.lm_eval_tasks.utils import split_context

TASKS_DIR = Path(__file__).with_name("lm_eval_tasks")

MMLU_SUBJECTS = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge", "college_biology",
    "college_chemistry", "college_computer_science", "college_mathematics", "college_medicine", "college_physics",
    "computer_security", "conceptual_physics", "econometrics", "electrical_engineering", "elementary_mathematics",
    "formal_logic", "global_facts", "high_school_biology", "high_school_chemistry", "high_school_computer_science",
    "high_school_european_history", "high_school_geography", "high_school_government_and_politics",
    "high_school_macroeconomics", "high_school_mathematics", "high_school_microeconomics", "high_school_physics",
    "high_school_psychology", "high_school_statistics", "high_school_us_history", "high_school_world_history",
    "human_aging", "human_sexuality", "international_law", "jurisprudence", "logical_fallacies", "machine_learning",
    "management", "marketing", "medical_genetics", "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition",
    "philosophy", "prehistory", "professional_accounting", "professional_law", "professional_medicine",
    "professional_psychology", "public_relations", "security_studies", "sociology", "us_foreign_policy", "virology",
    "world_religions",
)  # fmt: skip

ARC_FILES = {"train": "Train", "validation": "Dev", "test": "Test"}
HELLASWAG_TRAIN = "hellaswag/hellaswag_train.jsonl"  # optional: the hub's train split, for few-shot examples


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


# ----------------------------------------------------------------------------------------------- request checks


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


def required_files(task: str) -> list[str]:
    """The files, relative to the data folder, that the offline version of ``task`` reads."""
    if task == "arc":
        return [f"arc/ARC-Challenge/ARC-Challenge-{part}.jsonl" for part in ARC_FILES.values()]
    if task == "hellaswag":
        return ["hellaswag/hellaswag_val_full.txt"]
    return [f"mmlu/{split}/{s}_{split}.csv" for s in MMLU_SUBJECTS for split in ("dev", "test")]


def default_data_dirs() -> list[Path]:
    """The data folder used when none is given: ``$SYMNOISE_DATA_DIR`` (see `symnoise.evaluation.sources`)."""
    from .sources import data_dir

    folder = data_dir()
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


def check_checkpoint(checkpoint: str) -> None:
    """Reject a checkpoint that names a local path which does not exist; anything else may be a hub name."""
    path = Path(checkpoint).expanduser()
    looks_local = path.is_absolute() or checkpoint.startswith((".", "~")) or checkpoint.count("/") > 1
    if looks_local and not path.exists():
        raise LeaderboardError(
            f"checkpoint not found: {checkpoint} (give a folder written by save_pretrained or a hub model name)"
        )


# ------------------------------------------------------------------------------------- local data -> JSON Lines


def read_arc(path: str | Path) -> list[dict[str, Any]]:
    """Official ARC JSONL -> rows in the hub ``allenai/ai2_arc`` schema the harness's ARC prompts read."""
    rows = []
    for number, item in _jsonl_items(path):
        choices = item["question"]["choices"]
        row = {
            "id": item["id"],
            "question": item["question"]["stem"],
            "choices": {"text": [c["text"] for c in choices], "label": [c["label"] for c in choices]},
            "answerKey": item["answerKey"],
        }
        if row["answerKey"] not in row["choices"]["label"]:
            raise LeaderboardError(f"{path}:{number}: answerKey {row['answerKey']!r} is not a choice label")
        rows.append(row)
    return rows


def _jsonl_items(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, parsed object) of each non-blank line of a JSON Lines file."""
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if line.strip():
                yield number, json.loads(line)


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
    for number, item in _jsonl_items(path):
        missing = [k for k in ("activity_label", "ctx_a", "ctx_b", "endings", "label") if k not in item]
        if missing or len(item["endings"]) != 4 or str(item["label"]) not in {"0", "1", "2", "3"}:
            raise LeaderboardError(
                f"{path}:{number}: expected a HellaSwag row (activity_label, ctx_a, ctx_b, "
                f"4 endings, label 0-3){'; missing ' + ', '.join(missing) if missing else ''}"
            )
        rows.append(
            {
                "ind": int(item.get("ind", number - 1)),
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
                raise LeaderboardError(f"{path}:{number}: expected question, A, B, C, D, answer letter A-D")
            rows.append(
                {
                    "question": fields[0],
                    "subject": subject,
                    "choices": fields[1:5],
                    "answer": "ABCD".index(fields[5]),
                }
            )
    return rows


def _write_jsonl(rows: list[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


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
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")


def offline_task_names(task: str) -> list[str]:
    """The harness task names of the offline definitions of one leaderboard task."""
    if task == "mmlu":
        return [f"symnoise_mmlu_{s}" for s in MMLU_SUBJECTS]
    return [f"symnoise_{LEADERBOARD_TASKS[task].harness_name}"]


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
        if task.name == "arc":
            files = {}
            for split, part in ARC_FILES.items():
                files[split] = f"arc_challenge_{split}.jsonl"
                _write_jsonl(
                    read_arc(data_dir / f"arc/ARC-Challenge/ARC-Challenge-{part}.jsonl"), jsonl / files[split]
                )
            _task_yaml(
                task_dir / "arc_challenge.yaml",
                "arc_challenge.yaml",
                "symnoise_arc_challenge",
                jsonl,
                files,
                num_fewshot=shots["arc"],
            )
        elif task.name == "hellaswag":
            _write_jsonl(
                read_hellaswag(data_dir / "hellaswag/hellaswag_val_full.txt"), jsonl / "hellaswag.jsonl"
            )
            files, splits = {"validation": "hellaswag.jsonl"}, {}
            if (data_dir / HELLASWAG_TRAIN).is_file():  # the harness's few-shot source
                _write_jsonl(
                    read_hellaswag_hub_jsonl(data_dir / HELLASWAG_TRAIN), jsonl / "hellaswag_train.jsonl"
                )
                files["train"] = "hellaswag_train.jsonl"
                # the harness's own split settings, so that even its sampler draws the same shots
                splits = {
                    "training_split": "train",
                    "validation_split": "validation",
                    "test_split": None,
                    "fewshot_split": None,
                }
            _task_yaml(
                task_dir / "hellaswag.yaml",
                "hellaswag.yaml",
                "symnoise_hellaswag",
                jsonl,
                files,
                num_fewshot=shots["hellaswag"],
                **splits,
            )
        else:
            for subject, name in zip(MMLU_SUBJECTS, offline_task_names("mmlu"), strict=True):
                files = {}
                for split in ("dev", "test"):
                    files[split] = f"mmlu/{subject}_{split}.jsonl"
                    _write_jsonl(
                        read_mmlu(data_dir / f"mmlu/{split}/{subject}_{split}.csv", subject),
                        jsonl / files[split],
                    )
                readable = subject.replace("_", " ")
                description = (
                    f"The following are multiple choice questions (with answers) about {readable}.\n\n"
                )
                _task_yaml(
                    task_dir / f"mmlu_{subject}.yaml",
                    "mmlu_template.yaml",
                    name,
                    jsonl,
                    files,
                    task_alias=subject,
                    description=description,
                    num_fewshot=shots["mmlu"],
                )
    return task_dir


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
    Returns a JSON-ready report: per task the metric value, its stderr, shots and documents, and the average.
    """
    specs = resolve_tasks(tasks)
    shots = {t.name: t.num_fewshot for t in specs} | dict(num_fewshot or {})
    if online and data_dir is not None:
        raise LeaderboardError("give either a data folder (offline) or online, not both")
    if limit is not None and limit < 1:
        raise LeaderboardError(f"limit must be a positive number of documents, got {limit}")
    root = None if online else find_data_dir(specs, data_dir)
    if isinstance(checkpoint, (str, os.PathLike)):
        check_checkpoint(str(checkpoint))

    import lm_eval
    import torch
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    if isinstance(checkpoint, (str, os.PathLike)):
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        lm = HFLM(pretrained=str(checkpoint), batch_size=batch_size, device=device)
    else:
        lm = checkpoint
    scores = []
    with tempfile.TemporaryDirectory(prefix="symnoise-leaderboard-") as work:
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
    }


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
