"""The offline leaderboard tasks against lm-evaluation-harness's own definitions, pointed at the same local files.

* HellaSwag: every local validation item gives the query of the installed harness's ``process_docs``, and the seven
  WikiHow items with an abbreviation before their last sentence ("u.s. nationals", "p.m. ct.") are not capitalised.
* The harness's official ``arc_challenge``, ``hellaswag`` and ``mmlu_<subject>`` YAMLs (included from the installed
  lm_eval, their dataset switched to our JSON Lines) and ours give identical few-shot contexts, targets and choices
  on a sample of documents; for HellaSwag with a train split present, as the harness draws its shots from train.
* MMLU's two aggregates equal the harness's group aggregation (weighted by size) and the plain mean.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from symnoise.evaluation import leaderboard as lb
from symnoise.evaluation.leaderboard_data import read_hellaswag
from symnoise.evaluation.lm_eval_tasks.utils import hellaswag_doc, split_context

pytestmark = pytest.mark.slow  # multi-process, subprocess or whole-pipeline tests: `make test` only

lm_eval = pytest.importorskip("lm_eval")

HARNESS_TASKS = Path(lm_eval.__file__).parent / "tasks"
# The WikiHow items whose last ". " is an abbreviation; the old heuristic capitalised the word after it.
ABBREVIATION_ITEMS = {
    3471: "must also be u.s. citizens or u.s. nationals.",
    3861: "However, dr. brown's bottles have more parts than traditional baby bottles, so you must be sure to "
    "fully disassemble it.",
    7027: "saturday to sunday 9 a.m.-6 p.m. ct.",
    7516: "(e.g. toilet paper and toothpaste) you buy a lot.",
    7878: "from 10 a.m. to 10 p.m., but that can vary based on amtrak train schedules.",
    8273: "a child born in the u.s. or one born in a different country.",
    9678: 'For example, jane t. smith can advertise her services using her name: " jane t. smith, accountant.',
}


@pytest.fixture(scope="module")
def hellaswag_rows(shared_data):
    return read_hellaswag(shared_data / "hellaswag" / "hellaswag_val_full.txt")


def test_every_hellaswag_query_is_the_harness_process_docs(hellaswag_rows):
    import datasets
    from lm_eval.tasks.hellaswag.utils import process_docs

    theirs = process_docs(datasets.Dataset.from_list(hellaswag_rows))
    mismatched = [
        row["ind"]
        for row, doc in zip(hellaswag_rows, theirs, strict=True)
        if hellaswag_doc(row) != {k: doc[k] for k in ("query", "choices", "gold")}
    ]
    assert mismatched == []


def test_abbreviations_in_wikihow_contexts_are_not_capitalised(hellaswag_rows):
    for ind, ending in ABBREVIATION_ITEMS.items():
        row = hellaswag_rows[ind]
        assert row["ctx_b"] == "" and row["activity_label"] not in ("", None), ind
        assert hellaswag_doc(row)["query"].endswith(ending), (ind, hellaswag_doc(row)["query"][-80:])
    wikihow = [r for r in hellaswag_rows if r["ctx_b"] == "" and r["ctx"][-1:] in '.!?"']
    activitynet = [r for r in hellaswag_rows if r["ctx_b"]]
    assert len(activitynet) + len([r for r in hellaswag_rows if not r["ctx_b"]]) == 10042
    assert len(activitynet) == 3236 and len(wikihow) > 6000
    # ActivityNet items: the trailing fragment is capitalised as the harness does ("... on a roof. He").
    assert hellaswag_doc(hellaswag_rows[0])["query"].endswith("on a roof. He")
    assert split_context("Camel ride: Two people ride. the camel") == (
        "Camel ride",
        "Two people ride.",
        "the camel",
    )


# ------------------------------------------------------------------ the official task YAMLs on local files


def _official(
    task_dir: Path, official_yaml: Path, name: str, data_dir: Path, files: dict[str, str], **extra
) -> None:
    config = {
        "include": str(official_yaml),
        "task": name,
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {
            "data_dir": str(data_dir),
            "data_files": files,
            "cache_dir": str(data_dir / "cache-official"),
        },
        **extra,
    }
    (task_dir / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


@pytest.fixture(scope="module")
def managers(shared_data, hellaswag_rows, tmp_path_factory):
    """Our offline tasks and the official ones, on the same local files; a HellaSwag train split is made from
    the last 500 validation items in the hub schema, so that both draw their shots from train."""
    from lm_eval.tasks import TaskManager

    root = tmp_path_factory.mktemp("lb-harness")
    data = root / "data"
    for part in ("arc", "mmlu", "hellaswag"):
        (data / part).mkdir(parents=True)
    shutil.copytree(shared_data / "arc" / "ARC-Challenge", data / "arc" / "ARC-Challenge")
    for split in ("dev", "test"):
        (data / "mmlu" / split).mkdir()
        for subject in lb.MMLU_SUBJECTS:
            shutil.copy(shared_data / "mmlu" / split / f"{subject}_{split}.csv", data / "mmlu" / split)
    shutil.copy(shared_data / "hellaswag" / "hellaswag_val_full.txt", data / "hellaswag")
    with (data / lb.HELLASWAG_TRAIN).open("w") as handle:
        for row in hellaswag_rows[-500:]:
            hub = {k: row[k] for k in ("ind", "activity_label", "ctx_a", "ctx_b", "ctx", "endings")}
            handle.write(json.dumps({**hub, "label": int(row["label"]), "split": "train"}) + "\n")

    ours_dir = lb.write_offline_tasks(data, list(lb.LEADERBOARD_TASKS.values()), root / "ours")
    jsonl = ours_dir.parent / "data"
    official_dir = root / "official"
    official_dir.mkdir()
    _official(
        official_dir,
        HARNESS_TASKS / "arc" / "arc_challenge.yaml",
        "official_arc_challenge",
        jsonl,
        {s: f"arc_challenge_{s}.jsonl" for s in ("train", "validation", "test")},
        num_fewshot=25,
    )
    _official(
        official_dir,
        HARNESS_TASKS / "hellaswag" / "hellaswag.yaml",
        "official_hellaswag",
        jsonl,
        {"train": "hellaswag_train.jsonl", "validation": "hellaswag.jsonl"},
        num_fewshot=10,
    )
    for subject in ("abstract_algebra", "high_school_us_history", "virology"):
        _official(
            official_dir,
            HARNESS_TASKS / "mmlu" / "default" / f"mmlu_{subject}.yaml",
            f"official_mmlu_{subject}",
            jsonl,
            {s: f"mmlu/{subject}_{s}.jsonl" for s in ("dev", "test")},
            num_fewshot=5,
        )
    return (
        TaskManager(include_path=str(ours_dir), include_defaults=False),
        TaskManager(include_path=str(official_dir), include_defaults=False),
    )


def _load(manager, name):
    return manager.load([name])["tasks"][name]


def _eval_docs(task):
    return list(task.test_docs() if task.has_test_docs() else task.validation_docs())


@pytest.mark.floor
@pytest.mark.parametrize(
    "ours_name, official_name, shots, sample",
    [
        ("symnoise_arc_challenge", "official_arc_challenge", 25, [0, 44, 500, 1171]),
        ("symnoise_hellaswag", "official_hellaswag", 10, [0, 1673, 3471, 7027, 9678]),
        ("symnoise_mmlu_abstract_algebra", "official_mmlu_abstract_algebra", 5, [0, 99]),
        ("symnoise_mmlu_high_school_us_history", "official_mmlu_high_school_us_history", 5, [3, 150]),
        ("symnoise_mmlu_virology", "official_mmlu_virology", 5, [10]),
    ],
)
def test_contexts_equal_the_harness_official_task(managers, ours_name, official_name, shots, sample):
    ours_manager, official_manager = managers
    ours, official = _load(ours_manager, ours_name), _load(official_manager, official_name)
    for task in (ours, official):
        task.set_fewshot_seed(seed=1234)  # what simple_evaluate does (its default fewshot_random_seed)
    our_docs, their_docs = _eval_docs(ours), _eval_docs(official)
    assert len(our_docs) == len(their_docs)
    assert len(ours.fewshot_docs()) == len(official.fewshot_docs())
    for i in sample:
        assert ours.doc_to_text(our_docs[i]) == official.doc_to_text(their_docs[i])
        assert ours.doc_to_choice(our_docs[i]) == official.doc_to_choice(their_docs[i])
        assert ours.doc_to_target(our_docs[i]) == official.doc_to_target(their_docs[i])
        assert ours.fewshot_context(our_docs[i], shots) == official.fewshot_context(their_docs[i], shots), i


@pytest.mark.floor
def test_mmlu_is_reported_unweighted_and_size_weighted():
    from lm_eval.api.metrics import aggregate_subtask_metrics, pooled_sample_stderr

    subjects = {
        "a": {"value": 0.5, "stderr": 0.05, "n_docs": 100},
        "b": {"value": 0.9, "stderr": 0.02, "n_docs": 300},
    }
    agg = lb.mmlu_aggregates(subjects)
    assert agg["value"] == pytest.approx(0.7) and agg["size_weighted_value"] == pytest.approx(0.8)
    assert agg["size_weighted_value"] == aggregate_subtask_metrics(
        [0.5, 0.9], [100, 300], weight_by_size=True
    )
    assert agg["size_weighted_stderr"] == pytest.approx(float(pooled_sample_stderr([0.05, 0.02], [100, 300])))
    assert agg["stderr"] == pytest.approx((0.05**2 + 0.02**2) ** 0.5 / 2)
    assert "Leaderboard v1" in agg["aggregation"]
