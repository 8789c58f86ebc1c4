"""``symnoise judge`` with the ``alpaca_eval`` package's annotators, against real HTTP servers on 127.0.0.1.

* Replay: the published ``alpaca_eval_gpt4`` annotations carry the judge's ``raw_completion``; a server answering
  every request with the recorded completion must give back exactly the published preferences and win rates.
* The requests symnoise sends equal, message for message and field for field, those the ``alpaca_eval`` package
  itself sends for the same rows (the package's own annotator is run against the same server).
* AlpacaEval's rules kept: identical outputs are draws without a request; the order of the two outputs follows the
  package's seeded rule (checked through the replay: a wrong switch flips the preference).
* What symnoise adds: non-zero exit with counts when verdicts are missing, ``--retry-nulls``.

The full replay (2 x 805 rows) runs when ``SYMNOISE_FULL_REPLAY=1``; by default a subset of each file.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import run_symnoise
from local_server import LocalServer, clean_judge_environment

from symnoise import layout
from symnoise.cli.main import main
from symnoise.evaluation import annotators as A
from symnoise.evaluation import judge as J
from symnoise.evaluation import references as R
from symnoise.evaluation.judge_cache import JudgmentCache
from symnoise.evaluation.judge_clients import OpenAIChatJudge
from symnoise.evaluation.judge_inputs import Example

pytest.importorskip("alpaca_eval")

REPLAYABLE = [
    "alpaca-7b-neft",
    "llama-2-chat-7b-evol70k-neft",
]  # the published files that carry raw_completion
FULL = os.environ.get("SYMNOISE_FULL_REPLAY") == "1"
SUBSET = 60
API_KEY = "sk-replay-NOT-A-REAL-KEY-5521"


# --------------------------------------------------------------------------------------------- the server


class ChatServer(LocalServer):
    """A chat-completions server: ``answer(body)`` gives ``(status, payload)``; every body is recorded."""

    def __init__(self, answer: Callable[[dict], tuple[int, dict]]):
        self.answer = answer
        self.bodies: list[dict] = []
        self.lock = threading.Lock()
        super().__init__()

    def handle(self, request) -> None:
        body = json.loads(request.rfile.read(int(request.headers["Content-Length"])))
        with self.lock:
            self.bodies.append(body)
        status, payload = self.answer(body)
        self.send(request, status, payload)


def chat_response(content: str | None = None, **message) -> dict:
    """A chat.completion body (with usage, which the openai client of alpaca_eval reads)."""
    return {
        "id": "r",
        "object": "chat.completion",
        "created": 0,
        "model": "gpt-4",
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "logprobs": message.pop("logprobs", None),
                "message": {"role": "assistant", "content": content, **message},
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def user_content(body: dict) -> str:
    return body["messages"][-1]["content"]


def instruction_of(body: dict, instructions: list[str]) -> str:
    """The instruction a request is about: the longest known instruction in its user message."""
    content = user_content(body)
    return max((i for i in instructions if i in content), key=len)


def replay_answer(rows: list[dict]) -> Callable[[dict], tuple[int, dict]]:
    """Answer each request with the published raw completion of its row (empty content where none was recorded)."""
    recorded = {r["instruction"]: r.get("raw_completion") for r in rows}
    instructions = list(recorded)

    def answer(body: dict) -> tuple[int, dict]:
        return 200, chat_response(recorded[instruction_of(body, instructions)] or "")

    return answer


# --------------------------------------------------------------------------------------------- the data


@pytest.fixture(autouse=True)
def _offline_and_clean(monkeypatch):
    clean_judge_environment(monkeypatch)


def published(shared_data: Path, name: str) -> list[dict]:
    return json.loads(
        (shared_data / "alpaca_eval" / "annotations_alpaca_eval_gpt4" / f"{name}.json").read_text()
    )


def write_model_outputs(path: Path, rows: list[dict]) -> Path:
    path.write_text(
        json.dumps(
            [
                {
                    "instruction": r["instruction"],
                    "output": r["output_2"],
                    "generator": r["generator_2"],
                    "dataset": r["dataset"],
                }
                for r in rows
            ]
        )
    )
    return path


def same_preference(ours, theirs) -> bool:
    """Equal preferences, reading alpaca_eval's old tie 0 as its current 1.5 and NaN as null."""

    def norm(p):
        if p is None or (isinstance(p, float) and math.isnan(p)):
            return None
        return 1.5 if p == 0 else float(p)

    return norm(ours) == norm(theirs)


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """`symnoise judge ARGS` as a subprocess (conftest's `run_symnoise`), with ``env`` over this environment."""
    src = str(Path(J.__file__).parents[2])
    return run_symnoise(["judge", *args], env={**os.environ, **env, "PYTHONPATH": src}, timeout=600)


# ------------------------------------------------------------------------------------------------ replay


@pytest.mark.slow
@pytest.mark.parametrize("name", REPLAYABLE)
def test_replayed_completions_give_the_published_preferences_and_win_rate(
    shared_data, tmp_path, name, monkeypatch, capsys
):
    rows = published(shared_data, name)
    if not FULL:
        rows = rows[:SUBSET] + [
            r for r in rows[SUBSET:] if r["preference"] is None
        ]  # keep the published nulls
    outputs = write_model_outputs(tmp_path / f"{name}.json", rows)
    args = [str(outputs), "--data-dir", str(shared_data), "--out", str(tmp_path / "out"), "--workers", "4"]
    with ChatServer(replay_answer(rows)) as server:
        env = {"OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": API_KEY}
        if name == "alpaca-7b-neft":  # the real command, as a user runs it
            done = run_cli(args, {**env, "HF_HUB_OFFLINE": "1"})
            rc, err = done.returncode, done.stderr
        else:
            for key, value in env.items():
                monkeypatch.setenv(key, value)
            rc = main(["judge", *args])
            err = capsys.readouterr().err
        n_requests = len(server.bodies)
    annotations = json.loads((tmp_path / "out" / layout.ANNOTATIONS).read_text())
    metrics = json.loads((tmp_path / "out" / layout.JUDGE_METRICS).read_text())
    assert [a["instruction"] for a in annotations] == [r["instruction"] for r in rows]
    mismatches = [
        (a["instruction"][:40], a["preference"], r["preference"])
        for a, r in zip(annotations, rows, strict=True)
        if not same_preference(a["preference"], r["preference"])
    ]
    assert mismatches == []
    expected = J.judge_metrics([r["preference"] for r in rows])
    for key in ("win_rate", "standard_error", "n_wins", "n_wins_base", "n_draws", "n_total", "n_null"):
        assert metrics[key] == expected[key], key
    assert metrics["annotator"] == "alpaca_eval_gpt4" and metrics["judge"] == "openai:gpt-4"
    n_null = sum(r["preference"] is None for r in rows)
    assert (
        n_requests == len(rows) + 2 * n_null
    )  # a null is asked twice more (--max-reasks 2), all others once
    assert rc == (3 if n_null else 0), err
    if n_null:
        assert (
            f"incomplete: {n_null} of {len(rows)} examples have no verdict (unparsable {n_null}, failed 0)"
            in err
        )
    if FULL:
        board = (
            shared_data / "alpaca_eval" / "leaderboards" / "AlpacaEval_1" / "alpaca_eval_gpt4_leaderboard.csv"
        )
        import csv

        with board.open() as handle:
            row = {r[""]: r for r in csv.DictReader(handle)}[name]
        assert metrics["win_rate"] == pytest.approx(float(row["win_rate"]), abs=1e-12)
    print(
        f"\nreplay {name}: {len(rows)} rows, requests {n_requests}, win_rate {metrics['win_rate']:.4f}, "
        f"n_null {metrics['n_null']}, mismatches {len(mismatches)}"
    )


# ------------------------------------------------------------------------- same requests as alpaca_eval


def package_annotate(annotator: str, rows: list[dict], base_url: str, monkeypatch) -> list[dict]:
    """The alpaca_eval package's own annotator on ``rows`` (reference = output_1), sending to ``base_url``."""
    from alpaca_eval.annotators import PairwiseAnnotator

    monkeypatch.setenv("OPENAI_BASE_URL", base_url)
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    package = PairwiseAnnotator(annotators_config=annotator, caching_path=None, seed=0)
    outputs_1 = [
        {"instruction": r["instruction"], "output": r["output_1"], "generator": r["generator_1"]}
        for r in rows
    ]
    outputs_2 = [
        {"instruction": r["instruction"], "output": r["output_2"], "generator": r["generator_2"]}
        for r in rows
    ]
    return package.annotate_head2head(outputs_1=outputs_1, outputs_2=outputs_2, is_ordered=True)


def symnoise_annotate(annotator: str, rows: list[dict], base_url: str, tmp_path: Path) -> list[dict]:
    spec = A.load_annotator(annotator)
    judge = OpenAIChatJudge(
        base_url, spec.model, api_key=API_KEY, params=spec.request_params, return_choice=spec.wants_choice
    )
    examples = [
        Example(
            r["instruction"], r["output_1"], r["output_2"], r["generator_1"], r["generator_2"], r["dataset"]
        )
        for r in rows
    ]
    annotations, _ = J.judge_examples(
        examples, judge, JudgmentCache(tmp_path / f"{annotator}.jsonl"), annotator=spec, workers=2
    )
    return annotations


def by_instruction(bodies: list[dict], instructions: list[str]) -> dict[str, dict]:
    out = {}
    for body in bodies:
        out[instruction_of(body, instructions)] = body
    return out


def assert_same_requests_and_preferences(annotator: str, rows: list[dict], answer, tmp_path, monkeypatch):
    instructions = [r["instruction"] for r in rows]
    with ChatServer(answer) as server:
        theirs = package_annotate(annotator, rows, server.base_url, monkeypatch)
        their_bodies = by_instruction(server.bodies, instructions)
        n_theirs = len(server.bodies)
        server.bodies.clear()
        ours = symnoise_annotate(annotator, rows, server.base_url, tmp_path)
        our_bodies = by_instruction(server.bodies, instructions)
        assert (
            len(server.bodies) == n_theirs
        )  # the same requests, no more (identical rows: none on either side)
    assert set(our_bodies) == set(their_bodies) and len(our_bodies) > 0
    for instruction, body in their_bodies.items():
        assert our_bodies[instruction]["messages"] == body["messages"]  # the prompt, character for character
        assert our_bodies[instruction] == body  # and every decoding setting
    their_pref = {a["instruction"]: a["preference"] for a in theirs}
    for a in ours:
        assert same_preference(a["preference"], their_pref.get(a["instruction"])), a["instruction"][:60]
    return ours, their_bodies


@pytest.mark.floor
def test_requests_and_preferences_equal_the_alpaca_eval_package_gpt4(shared_data, tmp_path, monkeypatch):
    rows = published(shared_data, "alpaca-7b-neft")[:16]
    ours, bodies = assert_same_requests_and_preferences(
        "alpaca_eval_gpt4", rows, replay_answer(rows), tmp_path, monkeypatch
    )
    assert {a["model_shown_first"] for a in ours} == {True, False}  # both orders occurred
    body = next(iter(bodies.values()))
    assert body["model"] == "gpt-4" and body["max_tokens"] == 100 and body["temperature"] == 0
    assert body["messages"][0]["role"] == "system" and "leaderboard" in body["messages"][1]["content"]
    assert [a["preference"] for a in ours] == [float(r["preference"]) for r in rows]  # and as published


def test_chatgpt_fn_tool_call_requests_equal_the_package(shared_data, tmp_path, monkeypatch):
    rows = published(shared_data, "llama-2-chat-7b-evol70k-neft")[:10]
    instructions = [r["instruction"] for r in rows]

    def answer(body):  # a judge that prefers the shown output (b) for even-length instructions, else (a)
        pick = "Output (b)" if len(instruction_of(body, instructions)) % 2 == 0 else "Output (a)"
        call = {
            "id": "c",
            "type": "function",
            "function": {"name": "print_best_model", "arguments": json.dumps({"best_output": pick})},
        }
        return 200, chat_response(None, tool_calls=[call])

    ours, bodies = assert_same_requests_and_preferences("chatgpt_fn", rows, answer, tmp_path, monkeypatch)
    body = next(iter(bodies.values()))
    assert body["tools"][0]["function"]["name"] == "print_best_model" and body["max_tokens"] == 50
    assert {a["preference"] for a in ours} == {1.0, 2.0}


def test_weighted_gpt4_turbo_logprob_preferences_equal_the_package(shared_data, tmp_path, monkeypatch):
    rows = published(shared_data, "alpaca-7b-neft")[20:30]
    instructions = [r["instruction"] for r in rows]

    def answer(body):  # P(first shown better) depends on the instruction, so every row gets its own value
        p_m = 0.05 + 0.9 * (len(instruction_of(body, instructions)) % 17) / 16
        top = [
            {"token": "m", "logprob": math.log(p_m), "bytes": None},
            {"token": "M", "logprob": math.log(1 - p_m), "bytes": None},
        ]
        logprobs = {"content": [{"token": "m", "logprob": math.log(p_m), "bytes": None, "top_logprobs": top}]}
        return 200, chat_response("m", logprobs=logprobs)

    ours, bodies = assert_same_requests_and_preferences(A.AE2_ANNOTATOR, rows, answer, tmp_path, monkeypatch)
    body = next(iter(bodies.values()))
    assert body["model"] == "gpt-4-1106-preview" and body["logprobs"] is True and body["top_logprobs"] == 5
    assert all(1 < a["preference"] < 2 for a in ours) and len({a["preference"] for a in ours}) > 3


# --------------------------------------------------------------------------------- AlpacaEval's rules


def test_identical_outputs_are_draws_without_a_request(shared_data, tmp_path):
    folder = shared_data / "alpaca_eval" / "annotations_alpaca_eval_gpt4"
    rows = [
        r
        for path in sorted(folder.glob("*.json"))
        for r in json.loads(path.read_text())
        if r["output_1"] == r["output_2"]
    ]
    draws = [
        r
        for path in sorted(folder.glob("*.json"))
        for r in json.loads(path.read_text())
        if r["preference"] == 0
    ]
    assert len(rows) == len(draws) == 103 and {r["preference"] for r in rows} == {
        0
    }  # each draw is such a row
    outputs = write_model_outputs(tmp_path / "identical.json", rows)
    with ChatServer(lambda body: (500, {"error": {"message": "must not be asked"}})) as server:
        rc = main(
            [
                "judge",
                str(outputs),
                "--data-dir",
                str(shared_data),
                "--base-url",
                server.base_url,
                "--out",
                str(tmp_path / "out"),
            ]
        )
        assert server.bodies == []
    annotations = json.loads((tmp_path / "out" / layout.ANNOTATIONS).read_text())
    assert rc == 0 and [a["preference"] for a in annotations] == [1.5] * 103
    assert json.loads((tmp_path / "out" / layout.JUDGE_METRICS).read_text())["win_rate"] == 50.0


def synthetic(tmp_path: Path, n: int) -> tuple[Path, Path]:
    refs = [
        {"instruction": f"Task {i}: name a colour.", "output": f"Blue {i}.", "generator": "ref"}
        for i in range(n)
    ]
    outs = [
        {"instruction": r["instruction"], "output": f"Red {i}.", "generator": "m"} for i, r in enumerate(refs)
    ]
    ref_path, out_path = tmp_path / "ref.jsonl", tmp_path / "outputs.json"
    ref_path.write_text("".join(json.dumps(r) + "\n" for r in refs))
    out_path.write_text(json.dumps(outs))
    return ref_path, out_path


def test_a_run_where_every_request_fails_exits_non_zero_with_counts(tmp_path, capsys):
    ref_path, out_path = synthetic(tmp_path, 5)
    with ChatServer(lambda body: (500, {"error": {"message": "down"}})) as server:
        rc = main(
            [
                "judge",
                str(out_path),
                "--reference",
                str(ref_path),
                "--base-url",
                server.base_url,
                "--out",
                str(tmp_path / "out"),
                "--max-retries",
                "2",
                "--backoff",
                "0",
            ]
        )
        assert len(server.bodies) == 5 * 3
    captured = capsys.readouterr()
    assert rc == 3 and "win_rate n/a" in captured.out
    assert "incomplete: 5 of 5 examples have no verdict (unparsable 0, failed 5)" in captured.err
    annotations = json.loads((tmp_path / "out" / layout.ANNOTATIONS).read_text())
    assert all(a["preference"] is None and "HTTP 500" in a["null_reason"] for a in annotations)


def test_nulls_are_kept_until_retry_nulls_asks_them_again(tmp_path, capsys):
    ref_path, out_path = synthetic(tmp_path, 6)
    state = {"good": False}
    ranking = "[{'model': 'model_1', 'rank': 2}, {'model': 'model_2', 'rank': 1}]"  # the second shown wins

    def answer(body):
        undecided = not state["good"] and "Task 1:" in user_content(body) or "Task 4:" in user_content(body)
        return 200, chat_response("I cannot rank these." if undecided else ranking)

    common = [
        "judge",
        str(out_path),
        "--reference",
        str(ref_path),
        "--out",
        str(tmp_path / "out"),
        "--max-reasks",
        "1",
        "--workers",
        "1",
    ]
    with ChatServer(answer) as server:
        base = common + ["--base-url", server.base_url]
        assert main(base) == 3
        assert len(server.bodies) == 6 + 2 * 1  # two unparsable examples, each asked once more
        assert main(base) == 3 and len(server.bodies) == 8  # cached nulls are final without --retry-nulls
        state["good"] = True
        assert main(base + ["--retry-nulls"]) == 3  # Task 1 now answers; Task 4 still does not
        assert len(server.bodies) == 8 + 1 + 2
    err = capsys.readouterr().err
    assert "incomplete: 1 of 6 examples have no verdict (unparsable 1, failed 0)" in err
    annotations = json.loads((tmp_path / "out" / layout.ANNOTATIONS).read_text())
    spec = A.load_annotator()
    for i, a in enumerate(annotations):
        if i == 4:
            assert a["preference"] is None and a["raw_completion"] == "I cannot rank these."
        else:  # the second shown output won: the model when the reference was shown first
            assert a["preference"] == (
                1.0 if spec.is_switched(a["instruction"], a["output_1"], a["output_2"]) else 2.0
            )
    cache = JudgmentCache(tmp_path / "out" / layout.JUDGE_CACHE)
    assert len(cache) == 6  # re-asked nulls replaced their records (the later line wins)


# --------------------------------------------------------------------------------- endpoint and models


def test_openai_base_url_and_the_annotators_model_are_used(tmp_path, monkeypatch, capsys):
    ref_path, out_path = synthetic(tmp_path, 2)
    ranking = "[{'model': 'model_1', 'rank': 1}, {'model': 'model_2', 'rank': 2}]"
    with ChatServer(lambda body: (200, chat_response(ranking))) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
        assert main(["judge", str(out_path), "--reference", str(ref_path), "--out", str(tmp_path / "a")]) == 0
        assert [b["model"] for b in server.bodies] == ["gpt-4", "gpt-4"]
        assert (
            main(
                [
                    "judge",
                    str(out_path),
                    "--reference",
                    str(ref_path),
                    "--out",
                    str(tmp_path / "b"),
                    "--model",
                    "o3-mini",
                    "--max-tokens",
                    "2000",
                ]
            )
            == 0
        )
        reasoning = server.bodies[-1]
    assert reasoning["model"] == "o3-mini" and reasoning["max_completion_tokens"] == 2000
    assert "max_tokens" not in reasoning and "temperature" not in reasoning and "top_p" not in reasoning
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert API_KEY.encode() not in path.read_bytes()


@pytest.mark.parametrize(
    "model, reasoning",
    [
        ("o1", True),
        ("o3-mini", True),
        ("o4-mini-2025-04-16", True),
        ("gpt-5", True),
        ("gpt-5-mini", True),
        ("openai/o3", True),
        ("gpt-4", False),
        ("gpt-4o", False),
        ("gpt-4-1106-preview", False),
        ("llama-3-70b", False),
        ("o", False),
    ],
)
def test_reasoning_models_get_max_completion_tokens(model, reasoning):
    body = A.request_body({"max_tokens": 100, "temperature": 0, "top_p": 1.0}, model)
    assert ("max_completion_tokens" in body) == reasoning and ("max_tokens" in body) != reasoning


@pytest.mark.floor
def test_default_annotator_is_alpaca_eval_gpt4_and_pairwise_v1_is_only_named(tmp_path):
    spec = A.load_annotator()
    assert spec.name == "alpaca_eval_gpt4" and spec.model == "gpt-4"
    assert spec.request_params == {"max_tokens": 100, "temperature": 0, "top_p": 1.0}
    assert A.load_annotator(A.PAIRWISE_V1).name == A.PAIRWISE_V1
    with pytest.raises(A.AnnotatorError, match="unknown annotator 'nope'.*alpaca_eval_gpt4"):
        A.load_annotator("nope")


def test_reference_outputs_offline_come_from_the_data_folder(shared_data):
    ae1 = R.reference_set_for("alpaca_eval_gpt4")
    assert ae1.name == "ae1" and R.reference_set_for("chatgpt_fn").name == "ae1"
    ae2 = R.reference_set_for(A.AE2_ANNOTATOR)
    assert ae2.name == "ae2"
    rows, source = R.load_reference_outputs(ae1, shared_data)
    assert source.endswith("alpaca_eval_ae1_reference_text_davinci_003.jsonl") and len(rows) == 805
    assert rows[0]["output"] == published(shared_data, "alpaca-7b")[0]["output_1"]
    rows, source = R.load_reference_outputs(ae2, shared_data)
    assert source.endswith("gpt4_1106_preview.json") and rows[0]["generator"] == "gpt4_1106_preview"
    with pytest.raises(R.ReferenceError, match="offline.*no file .*gpt4_1106_preview.json"):
        R.load_reference_outputs(ae2, shared_data / "nowhere")


def test_a_judge_built_without_settings_takes_the_annotators(tmp_path):
    """As the grid builds it (`OpenAIChatJudge(url, model)`): the annotator's decoding settings are sent."""
    ref_path, out_path = synthetic(tmp_path, 2)
    ranking = "[{'model': 'model_1', 'rank': 1}, {'model': 'model_2', 'rank': 2}]"
    with ChatServer(lambda body: (200, chat_response(ranking))) as server:
        judge = OpenAIChatJudge(server.base_url, "local-judge")
        result = J.judge_outputs(out_path, ref_path, judge, tmp_path / "out")
        assert [(b["max_tokens"], b["temperature"], b["top_p"]) for b in server.bodies] == [(100, 0, 1.0)] * 2
    assert result.metrics["annotator"] == "alpaca_eval_gpt4" and result.metrics["n_null"] == 0
