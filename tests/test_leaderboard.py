"""``symnoise leaderboard``: the task definitions on real rows, scoring with an oracle, and a tiny model end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from symnoise.cli.main import main
from symnoise.evaluation import leaderboard as lb
from symnoise.evaluation.leaderboard_data import read_arc, read_hellaswag, read_mmlu
from symnoise.evaluation.lm_eval_tasks.utils import capitalize_continuation, hellaswag_doc, preprocess

pytest.importorskip("lm_eval")

ARC_NUMERIC_ROW = 44  # NYSEDREGENTS_2008_8_34 in ARC-Challenge-Test.jsonl, labels "1"-"4", answerKey "2"


def test_defaults_are_the_leaderboard_settings():
    shots_and_metric = {
        name: (t.harness_name, t.num_fewshot, t.metric) for name, t in lb.LEADERBOARD_TASKS.items()
    }
    assert shots_and_metric == {
        "arc": ("arc_challenge", 25, "acc_norm"),
        "hellaswag": ("hellaswag", 10, "acc_norm"),
        "mmlu": ("mmlu", 5, "acc"),
    }
    assert len(lb.MMLU_SUBJECTS) == len(set(lb.MMLU_SUBJECTS)) == 57


def test_resolve_tasks_names_what_is_allowed():
    assert [t.name for t in lb.resolve_tasks("mmlu, arc")] == ["mmlu", "arc"]
    with pytest.raises(lb.LeaderboardError, match="'gsm8k'.*allowed: arc, hellaswag, mmlu"):
        lb.resolve_tasks("arc,gsm8k")
    with pytest.raises(lb.LeaderboardError, match="allowed"):
        lb.resolve_tasks("")


# ------------------------------------------------------------------------------------------- real rows, by hand


def test_arc_rows_and_numeric_answer_keys(shared_data):
    rows = read_arc(shared_data / "arc/ARC-Challenge/ARC-Challenge-Test.jsonl")
    assert len(rows) == 1172
    assert rows[0]["id"] == "Mercury_7175875" and rows[0]["answerKey"] == "C"
    assert rows[0]["choices"]["label"] == ["A", "B", "C", "D"]
    numeric = rows[ARC_NUMERIC_ROW]
    assert numeric["id"] == "NYSEDREGENTS_2008_8_34"
    assert numeric["choices"]["label"] == ["1", "2", "3", "4"] and numeric["answerKey"] == "2"
    assert sum(r["choices"]["label"][0] == "1" for r in rows) == 22


def test_hellaswag_rows_and_harness_query(shared_data):
    rows = read_hellaswag(shared_data / "hellaswag/hellaswag_val_full.txt")
    assert len(rows) == 10042
    first = hellaswag_doc(rows[0])
    # Harness: "Roof shingle removal" + ": " + "A man is sitting on a roof." + " " + "he".capitalize()
    assert first == {
        "query": "Roof shingle removal: A man is sitting on a roof. He",
        "choices": [
            "is using wrap to wrap a pair of skis.",
            "is ripping level tiles off.",
            "is holding a rubik's cube.",
            "starts pulling up roofing on a roof.",
        ],
        "gold": 3,
    }
    assert hellaswag_doc(rows[1])["query"] == (
        "Clean and jerk: A lady walks to a barbell. She bends down and grabs the pole. The lady"
    )


def test_hellaswag_text_helpers():
    assert preprocess(" [header] How to x [title] Do y [step] z ") == " How to x. Do y z"
    assert (
        capitalize_continuation("Label: A b. the Lady") == "Label: A b. The lady"
    )  # str.capitalize, as the harness
    assert capitalize_continuation("Label: A b. Then c") == "Label: A b. Then c"
    assert capitalize_continuation("Label: he runs") == "Label: He runs"


def test_mmlu_rows(shared_data):
    rows = read_mmlu(shared_data / "mmlu/test/abstract_algebra_test.csv", "abstract_algebra")
    assert len(rows) == 100
    assert rows[0] == {
        "question": "Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.",
        "subject": "abstract_algebra",
        "choices": ["0", "4", "2", "6"],
        "answer": 1,
    }


# ------------------------------------------------------------------------ the task definitions, as lm-eval reads them


@pytest.fixture(scope="module")
def task_manager(shared_data, tmp_path_factory):
    from lm_eval.tasks import TaskManager

    work = tmp_path_factory.mktemp("lb-tasks")
    task_dir = lb.write_offline_tasks(shared_data, list(lb.LEADERBOARD_TASKS.values()), work)
    return TaskManager(include_path=str(task_dir), include_defaults=False)


def _task(manager, name):
    return manager.load([name])["tasks"][name]


def test_arc_task_definition(task_manager):
    task = _task(task_manager, "symnoise_arc_challenge")
    docs = list(task.test_docs())
    assert len(docs) == 1172 and len(task.fewshot_docs()) == 1119  # scored on test, shots from train
    assert task.config.num_fewshot == 25
    doc = docs[ARC_NUMERIC_ROW]
    assert task.doc_to_text(doc) == (
        "Question: Which statement best describes the energy changes that occur while a child is riding on a sled "
        "down a steep, snow-covered hill?\nAnswer:"
    )
    assert (
        task.doc_to_choice(doc)[task.doc_to_target(doc)]
        == "Kinetic energy increases and potential energy decreases."
    )
    assert task.doc_to_target(docs[0]) == 2
    context = task.fewshot_context(doc=doc, num_fewshot=25)
    assert context.count("Question: ") == 26 and context.endswith(task.doc_to_text(doc))


def test_hellaswag_task_definition(task_manager):
    task = _task(task_manager, "symnoise_hellaswag")
    docs = list(task.test_docs())
    assert len(docs) == 10042 and task.config.num_fewshot == 10
    assert task.doc_to_text(docs[0]) == "Roof shingle removal: A man is sitting on a roof. He"
    assert task.doc_to_target(docs[0]) == 3
    assert task.doc_to_choice(docs[0])[3] == "starts pulling up roofing on a roof."
    # lm-eval removes the scored item from its own shots only when the shot split is the scored split.
    assert task.config.fewshot_split == task.config.test_split == "validation"
    context = task.fewshot_context(doc=docs[0], num_fewshot=10)
    assert context.count("\n\n") == 10 and context.endswith("\n\n" + task.doc_to_text(docs[0]))


def test_mmlu_task_definition(task_manager):
    task = _task(task_manager, "symnoise_mmlu_abstract_algebra")
    assert task.config.num_fewshot == 5 and len(task.test_docs()) == 100
    doc = list(task.test_docs())[0]
    assert task.doc_to_text(doc) == (
        "Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.\n"
        "A. 0\nB. 4\nC. 2\nD. 6\nAnswer:"
    )
    assert task.doc_to_choice(doc) == ["A", "B", "C", "D"] and task.doc_to_target(doc) == 1
    context = task.fewshot_context(doc=doc, num_fewshot=5)
    assert context.startswith(
        "The following are multiple choice questions (with answers) about abstract algebra.\n\n"
        "Find all c in Z_3 such that Z_3[x]/(x^2 + c) is a field.\nA. 0\nB. 1\nC. 2\nD. 3\nAnswer: B\n\n"
    )
    assert context.count("\nAnswer:") == 6 and context.endswith(task.doc_to_text(doc))


def test_online_names_exist_in_the_installed_harness():
    import lm_eval.tasks
    from lm_eval.tasks import TaskManager

    folders = [str(Path(lm_eval.tasks.__file__).parent / name) for name in ("arc", "hellaswag", "mmlu")]
    known = set(TaskManager(include_path=folders, include_defaults=False).all_tasks)
    assert {t.harness_name for t in lb.LEADERBOARD_TASKS.values()} <= known
    assert {f"mmlu_{s}" for s in lb.MMLU_SUBJECTS} <= known  # the per-subject results the mean is taken over


def test_data_folder_is_found_without_being_named(shared_data, monkeypatch, tmp_path):
    tasks = lb.resolve_tasks("arc,hellaswag,mmlu")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SYMNOISE_DATA_DIR", str(shared_data))
    assert lb.find_data_dir(tasks) == shared_data
    monkeypatch.setenv("SYMNOISE_DATA_DIR", str(tmp_path))
    with pytest.raises(lb.LeaderboardError, match="--data-dir.*--online"):
        lb.find_data_dir(tasks)


# ----------------------------------------------------------------------------------- scoring with a known answer


def _gold_continuations(shared_data) -> dict[str, str]:
    """Prompt of each scored document (written out by hand from the harness's formats) -> the correct continuation."""
    gold = {}
    for row in read_arc(shared_data / "arc/ARC-Challenge/ARC-Challenge-Test.jsonl"):
        answer = row["choices"]["text"][row["choices"]["label"].index(row["answerKey"])]
        gold[f"Question: {row['question']}\nAnswer:"] = " " + answer
    for row in read_hellaswag(shared_data / "hellaswag/hellaswag_val_full.txt"):
        doc = hellaswag_doc(row)
        gold[doc["query"]] = " " + doc["choices"][doc["gold"]]
    for subject in lb.MMLU_SUBJECTS:
        for row in read_mmlu(shared_data / f"mmlu/test/{subject}_test.csv", subject):
            options = "".join(
                f"\n{letter}. {text}" for letter, text in zip("ABCD", row["choices"], strict=True)
            )
            gold[f"{row['question'].strip()}{options}\nAnswer:"] = " " + "ABCD"[row["answer"]]
    return gold


def _oracle(gold: dict[str, str], right: bool):
    """An lm-eval LM that gives log-likelihood 0 to the correct answer and -10 to the others (or the reverse)."""
    from lm_eval.api.model import LM

    class Oracle(LM):
        def loglikelihood(self, requests):
            out = []
            for request in requests:
                context, continuation = request.args
                correct = gold[context.rsplit("\n\n", 1)[-1]] == continuation
                out.append((0.0 if correct == right else -10.0, correct == right))
            return out

        def loglikelihood_rolling(self, requests):
            raise NotImplementedError

        def generate_until(self, requests):
            raise NotImplementedError

    return Oracle()


@pytest.mark.parametrize("right", [True, False], ids=["oracle", "anti-oracle"])
def test_known_answers_score_one_or_zero(shared_data, right):
    gold = _gold_continuations(shared_data)
    tasks = ["arc", "hellaswag", "mmlu"] if right else ["arc", "hellaswag"]
    report = lb.run_leaderboard(_oracle(gold, right), tasks, data_dir=shared_data, limit=4)
    expected = 1.0 if right else 0.0
    for name in tasks:
        score = report["tasks"][name]
        assert score["value"] == expected, name
        assert score["n_docs"] == (4 * 57 if name == "mmlu" else 4)
    if right:
        subjects = report["tasks"]["mmlu"]["subjects"]
        assert len(subjects) == 57 and all(s["value"] == 1.0 and s["n_docs"] == 4 for s in subjects.values())
    assert report["average"] == expected


# ------------------------------------------------------------------------------------------------------ the CLI


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if the harness's HF model class is ever built."""
    from lm_eval.models import huggingface

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the request was checked")

    monkeypatch.setattr(huggingface.HFLM, "__init__", refuse)


def test_bad_input_is_refused_before_loading(no_model_load, shared_data, tmp_path, capsys):
    assert (
        main(["leaderboard", "org/model", "--tasks", "arc,winogrande", "--data-dir", str(shared_data)]) == 2
    )
    assert "'winogrande'" in capsys.readouterr().err
    assert main(["leaderboard", "org/model", "--data-dir", str(tmp_path / "nowhere")]) == 2
    assert "data folder not found" in capsys.readouterr().err
    (tmp_path / "hellaswag").mkdir()
    assert main(["leaderboard", "org/model", "--tasks", "hellaswag,arc", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "hellaswag/hellaswag_val_full.txt" in err and "arc/ARC-Challenge/ARC-Challenge-Train.jsonl" in err
    assert (
        main(
            ["leaderboard", str(tmp_path / "no-checkpoint"), "--tasks", "arc", "--data-dir", str(shared_data)]
        )
        == 2
    )
    assert "checkpoint not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["leaderboard", "org/model", "--online", "--data-dir", str(shared_data)])


def test_tiny_model_end_to_end(shared_data, tiny_tokenizer, tmp_path, capsys):
    from conftest import make_tiny_model

    checkpoint = tmp_path / "tiny"
    make_tiny_model("llama").save_pretrained(checkpoint)
    tiny_tokenizer.save_pretrained(checkpoint)
    out = tmp_path / "leaderboard.json"
    argv = [
        "leaderboard",
        str(checkpoint),
        "--data-dir",
        str(shared_data),
        "--limit",
        "4",
        "--batch-size",
        "8",
        "--device",
        "cpu",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    scores = report["tasks"]
    assert [(s["task"], s["n_shot"], s["metric"]) for s in scores.values()] == [
        ("arc", 25, "acc_norm"),
        ("hellaswag", 10, "acc_norm"),
        ("mmlu", 5, "acc"),
    ]
    for s in scores.values():
        assert 0.0 <= s["value"] <= 1.0 and (s["stderr"] is None or s["stderr"] >= 0.0)
    assert scores["arc"]["n_docs"] == scores["hellaswag"]["n_docs"] == 4
    assert all(sub["n_docs"] == 4 and sub["n_shot"] == 5 for sub in scores["mmlu"]["subjects"].values())
    assert scores["mmlu"]["value"] == pytest.approx(
        sum(sub["value"] for sub in scores["mmlu"]["subjects"].values()) / 57
    )
    assert report["average"] == pytest.approx(sum(s["value"] for s in scores.values()) / 3)
    assert report["mode"] == "offline" and report["limit"] == 4
    assert "average" in printed and f"{100 * report['average']:.2f}" in printed
    with capsys.disabled():
        print("\n" + printed)


def test_cli_writes_into_a_run_directory_by_default(tmp_path, monkeypatch, capsys):
    """For a run written by `symnoise train`, the report lands where `symnoise report` looks for it."""
    import symnoise.cli.leaderboard as cli
    from symnoise.cli.main import main

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "symnoise_run.json").write_text("{}")
    fake = {"tasks": {}, "average": None}
    monkeypatch.setattr(cli, "run_leaderboard", lambda *a, **k: fake)
    monkeypatch.setattr(cli, "format_table", lambda report: "table")
    assert main(["leaderboard", str(run_dir), "--limit", "1"]) == 0
    assert json.loads((run_dir / "eval" / "leaderboard.json").read_text()) == fake
