"""``symnoise judge`` against a real HTTP server on 127.0.0.1 that plays a chat-completions judge and injects
faults (slow answers, 429, 500, garbage bodies, dropped connections, unparsable verdicts, 401).

The fake judge always prefers the output that contains MARKER, so the right preference of every example is
known exactly, whichever order the two outputs were shown in."""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from local_server import LocalServer, clean_judge_environment

from symnoise import layout
from symnoise.cli.main import main
from symnoise.evaluation import judge as J
from symnoise.evaluation.annotators import (
    PAIRWISE_V1,
    PAIRWISE_V1_SYSTEM,
    build_messages,
    load_annotator,
    model_shown_first,
    parse_verdict,
)
from symnoise.evaluation.judge_cache import JudgmentCache
from symnoise.evaluation.judge_clients import AlpacaEvalJudge, OpenAIChatJudge
from symnoise.evaluation.judge_hf import HFJudge, context_length
from symnoise.evaluation.judge_inputs import Example, load_examples
from symnoise.evaluation.references import REFERENCE_SETS, local_reference_path

MARKER = "PREFERME"
API_KEY = "sk-fake-7Qx2-DO-NOT-LEAK-91zK"
SLOW_S = 4.0
CLIENT_TIMEOUT_S = 1.5  # far above a normal answer even on a loaded 2-core CI machine
ANSWER_STYLES = [
    "Output ({})",
    "**Output ({})**",
    "I prefer Output ({}).",
    "output {}",
    "Output ({}) is better than the other one.",
]


# --------------------------------------------------------------------------------------------- fake server


class FakeJudgeServer(LocalServer):
    """A threaded chat-completions server. ``plan[instruction]`` lists the fault of each successive request
    for that instruction ("slow", "429", "500", "garbage", "drop", "unparsable", "401"); then it answers."""

    def __init__(
        self, instructions: list[str], plan: dict[str, list[str]] | None = None, hang_after: int | None = None
    ):
        self.instructions = sorted(instructions, key=len, reverse=True)
        self.plan = plan or {}
        self.hang_after = hang_after  # after this many verdicts, the next request hangs until `release`
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str]] = []  # (instruction, fault) of every request received
        self.verdicts: Counter[str] = Counter()  # instruction -> verdicts delivered (the "paid" answers)
        self.auth: set[str] = set()
        super().__init__()

    def __exit__(self, *exc):
        self.release.set()
        super().__exit__(*exc)

    def count(self, fault: str | None = None) -> int:
        with self.lock:
            return sum(1 for _, f in self.requests if fault is None or f == fault)

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        body = json.loads(h.rfile.read(int(h.headers["Content-Length"])))
        content = body["messages"][-1]["content"]
        instruction = next(i for i in self.instructions if i in content)
        with self.lock:
            self.auth.add(h.headers.get("Authorization", ""))
            attempt = sum(1 for i, _ in self.requests if i == instruction)
            faults = self.plan.get(instruction, [])
            fault = faults[attempt] if attempt < len(faults) else "ok"
            hang = self.hang_after is not None and sum(self.verdicts.values()) >= self.hang_after
            self.requests.append((instruction, "hang" if hang else fault))
        if hang:
            self.release.wait(timeout=30)
            return
        try:
            self.respond(h, fault, instruction, content)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout) before the slow answer came

    def respond(self, h, fault: str, instruction: str, content: str) -> None:
        echo = h.headers.get("Authorization", "")  # real servers sometimes echo the key: it must be redacted
        if fault == "drop":
            h.close_connection = True
            return
        if fault == "slow":
            time.sleep(SLOW_S)
            return self.send(h, 200, completion("Output (a)"))
        if fault in ("429", "500", "401"):
            headers = {"Retry-After": "0"} if fault == "429" else {}
            return self.send(h, int(fault), {"error": {"message": f"no luck for key {echo}"}}, headers)
        if fault == "garbage":
            return self.send(h, 200, f"<html>proxy error {echo}".encode())
        text = (
            "Both answers have merits; I cannot decide." if fault == "unparsable" else self.verdict(content)
        )
        with self.lock:
            self.verdicts[instruction] += 1
        self.send(h, 200, completion(text))

    def verdict(self, content: str) -> str:
        start_b = content.rindex("## Output (b)\n")
        label = "b" if content.find(MARKER, content.rindex("## Output (a)\n")) > start_b else "a"
        with self.lock:
            style = ANSWER_STYLES[len(self.requests) % len(ANSWER_STYLES)]
        return style.format(label.upper() if len(self.requests) % 2 else label)


def completion(text: str) -> dict:
    return {
        "id": "x",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
    }


# ------------------------------------------------------------------------------------------------- data


def synthetic_references(n: int) -> list[dict]:
    return [
        {
            "instruction": f"Task {i}: describe the number {i * 7} in a sentence.",
            "output": f"The number {i * 7} is a number.",
            "generator": "ref-model",
            "dataset": "synthetic",
        }
        for i in range(n)
    ]


def real_references(shared_data: Path, n: int) -> list[dict]:
    path = local_reference_path(REFERENCE_SETS["ae1"], shared_data)
    if not path.is_file():
        pytest.skip(f"{path} not found")
    with path.open(encoding="utf-8") as handle:
        return [json.loads(next(handle)) for _ in range(n)]


def write_pair(tmp_path: Path, references: list[dict]) -> tuple[Path, Path, dict[str, int]]:
    """Reference JSONL and model outputs JSON where the model output holds MARKER in every other example.

    Returns the paths and the expected preference per instruction (2 model wins, 1 reference wins)."""
    refs, outputs, expected = [], [], {}
    for i, ref in enumerate(references):
        model_wins = i % 2 == 0
        refs.append({**ref, "output": ref["output"] + ("" if model_wins else f" {MARKER}")})
        outputs.append(
            {
                "instruction": ref["instruction"],
                "output": f"Answer {i}." + (f" {MARKER}" if model_wins else ""),
                "generator": "tiny-model",
                "dataset": ref["dataset"],
            }
        )
        expected[ref["instruction"]] = 2 if model_wins else 1
    ref_path, out_path = tmp_path / "reference.jsonl", tmp_path / "model_outputs.json"
    ref_path.write_text("".join(json.dumps(r) + "\n" for r in refs), encoding="utf-8")
    out_path.write_text(json.dumps(outputs), encoding="utf-8")
    return ref_path, out_path, expected


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    clean_judge_environment(monkeypatch)


def pairwise_v1(seed: int = 0):
    """symnoise's own prompt, which the fake server below speaks (the alpaca_eval annotators are tested in
    test_judge_alpaca_eval.py)."""
    return load_annotator(PAIRWISE_V1, seed=seed)


def fast_policy(sleeps: list[float], **overrides) -> J.RetryPolicy:
    settings = dict(
        max_attempts=4, base_delay=0.01, max_delay=0.05, max_total_retries=50, sleep=sleeps.append
    )
    return J.RetryPolicy(**{**settings, **overrides})


# ------------------------------------------------------------------------------------------- unit tests


@pytest.mark.parametrize(
    "text, verdict",
    [
        ("Output (a)", "a"),
        ("Output (b)", "b"),
        ("output (B)", "b"),
        ("**Output (a)**", "a"),
        ("`Output (b)`", "b"),
        ('"Output (a)"', "a"),
        ("Output a", "a"),
        ("Output [b]", "b"),
        ("(b)", "b"),
        ("B", "b"),
        ("a.", "a"),
        ("I think Output (b) is better.", "b"),
        ("## Verdict\n\nOutput (a)\n", "a"),
        ("Output (a) is better than Output (b).", "a"),
        ("Both Output (a) and Output (b) are fine.", None),
        ("Neither.", None),
        ("", None),
        (None, None),
        ("Outputs are equal", None),
        ("The output about bananas", None),
        ("Output (c)", None),
        ("ab", None),
        ("Output (ab)", None),
    ],
)
def test_parse_verdict(text, verdict):
    assert parse_verdict(text) == verdict


def test_order_is_seeded_per_instruction_and_balanced():
    instructions = [f"instruction {i}" for i in range(400)]
    first = [model_shown_first(0, i) for i in instructions]
    assert first == [model_shown_first(0, i) for i in instructions]
    assert 0.4 < sum(first) / len(first) < 0.6
    other_seed = [model_shown_first(1, i) for i in instructions]
    assert 0.3 < sum(a != b for a, b in zip(first, other_seed, strict=True)) / len(first) < 0.7


@pytest.mark.floor
def test_metrics_reproduce_the_alpaca_eval_leaderboard(shared_data):
    folder = shared_data / "alpaca_eval"
    with (folder / "leaderboards" / "AlpacaEval_1" / "alpaca_eval_gpt4_leaderboard.csv").open() as handle:
        board = {row[""]: row for row in csv.DictReader(handle)}
    for name in ["alpaca-7b", "alpaca-7b-neft", "llama-2-7b-chat-hf", "llama-2-chat-7b-evol70k-neft"]:
        annotations = json.loads((folder / "annotations_alpaca_eval_gpt4" / f"{name}.json").read_text())
        metrics = J.judge_metrics([a["preference"] for a in annotations])
        row = board[name]
        assert metrics["win_rate"] == pytest.approx(float(row["win_rate"]), abs=1e-9)
        assert metrics["standard_error"] == pytest.approx(float(row["standard_error"]), abs=1e-9)
        for key in ("n_wins", "n_wins_base", "n_draws", "n_total"):
            assert metrics[key] == int(row[key]), (name, key)
        assert metrics["n_null"] == 805 - int(row["n_total"])


def test_torn_last_line_is_dropped_and_appends_stay_clean(tmp_path):
    path = tmp_path / "cache.jsonl"
    cache = JudgmentCache(path)
    cache.put({"key": "k1", "verdict": "a"})
    cache.put({"key": "k2", "verdict": None})
    cache.put({"key": "k1", "verdict": "b"})  # a key already present is not written twice
    with path.open("a", encoding="utf-8") as handle:
        handle.write('{"key": "k3", "verd')  # a write killed halfway
    reloaded = JudgmentCache(path)
    assert len(reloaded) == 2 and reloaded.n_dropped_lines == 1 and reloaded.get("k1")["verdict"] == "a"
    reloaded.put({"key": "k4", "verdict": "b"})
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["key"] for line in lines] == ["k1", "k2", "k4"]


# ------------------------------------------------------------------------------ runs against the server


def test_faults_end_judged_or_null_with_exact_preferences(tmp_path, shared_data):
    references = real_references(shared_data, 14)
    ref_path, out_path, expected = write_pair(tmp_path, references)
    ins = [r["instruction"] for r in references]
    plan = {
        ins[0]: ["slow"],
        ins[1]: ["429", "429"],
        ins[2]: ["500"],
        ins[3]: ["garbage"],
        ins[4]: ["drop"],
        ins[5]: ["unparsable"] * 3,
        ins[6]: ["500"] * 4,
        ins[7]: ["drop", "slow", "429"],
        ins[8]: ["500", "drop"],
        ins[9]: ["unparsable"],
    }  # ins[9]: the re-ask gets a verdict
    sleeps: list[float] = []
    with FakeJudgeServer(ins, plan) as server:
        judge = OpenAIChatJudge(server.base_url, "fake-judge", api_key=API_KEY, timeout=CLIENT_TIMEOUT_S)
        result = J.judge_outputs(
            out_path,
            ref_path,
            judge,
            tmp_path / "run",
            annotator=pairwise_v1(3),
            workers=3,
            retry=fast_policy(sleeps),
        )
        first_requests = server.count()

        by_instruction = {a["instruction"]: a for a in result.annotations}
        assert len(result.annotations) == len(references) and set(by_instruction) == set(ins)
        assert server.auth == {f"Bearer {API_KEY}"}
        nulls = {a["instruction"]: a["null_reason"] for a in result.annotations if a["preference"] is None}
        assert set(nulls) == {ins[5], ins[6]}
        assert nulls[ins[5]] == "unparsable verdict"
        assert "HTTP 500" in nulls[ins[6]] and "gave up after 4 attempts" in nulls[ins[6]]
        for a in result.annotations:
            if a["instruction"] not in nulls:
                assert a["preference"] == expected[a["instruction"]], a
        judged = [a for a in result.annotations if a["preference"] is not None]
        assert {a["model_shown_first"] for a in judged} == {
            True,
            False,
        }  # both orders occurred and mapped back
        assert all(
            a["output_1"] == r["output"] + ("" if expected[r["instruction"]] == 2 else f" {MARKER}")
            for a, r in zip(result.annotations, references, strict=True)
        )
        assert all(
            a["generator_1"] == "text_davinci_003" and a["generator_2"] == "tiny-model"
            for a in result.annotations
        )

        stats = result.stats
        retries_expected = 1 + 2 + 1 + 1 + 1 + 3 + 3 + 2  # one per failed attempt that had another try
        assert stats.reasks == 2 + 1 and stats.unparsable == 1  # ins[5] asked 3 times in all, ins[9] twice
        assert stats.retries == retries_expected
        assert stats.requests == len(references) + retries_expected + stats.reasks
        assert first_requests == stats.requests
        assert 0.01 in sleeps and 0.02 in sleeps and 0.04 in sleeps and max(sleeps) <= 0.05 and 0.0 in sleeps
        metrics = json.loads((tmp_path / "run" / layout.JUDGE_METRICS).read_text())
        wins = sum(1 for a in judged if a["preference"] == 2)
        assert (
            metrics["n_null"] == 2 and metrics["n_total"] == len(references) - 2 and metrics["n_wins"] == wins
        )
        assert metrics["win_rate"] == pytest.approx(100 * wins / len(judged))
        written = json.loads((tmp_path / "run" / layout.ANNOTATIONS).read_text())
        assert [a["preference"] for a in written] == [a["preference"] for a in result.annotations]
        cache_keys = [json.loads(line)["key"] for line in (tmp_path / "run" / layout.JUDGE_CACHE).open()]
        assert (
            len(cache_keys) == len(set(cache_keys)) == len(references) - 1
        )  # the failed example is not cached
        print(
            f"\nfaults run: requests {stats.requests}, retries {stats.retries}, nulls {metrics['n_null']}, "
            f"slow {server.count('slow')}, 429 {server.count('429')}, 500 {server.count('500')}, "
            f"garbage {server.count('garbage')}, dropped {server.count('drop')}"
        )

        rerun = J.judge_outputs(
            out_path,
            ref_path,
            judge,
            tmp_path / "run",
            annotator=pairwise_v1(3),
            workers=3,
            retry=fast_policy([]),
        )
        assert server.count() - first_requests == 1  # only the example that had failed is asked again
        assert rerun.stats.cached == len(references) - 1
        assert rerun.annotations[6]["preference"] == expected[ins[6]]
        print(f"re-run: requests {rerun.stats.requests}, cached {rerun.stats.cached}")


def test_total_retry_budget_bounds_the_run(tmp_path):
    references = synthetic_references(6)
    ref_path, out_path, _ = write_pair(tmp_path, references)
    plan = {r["instruction"]: ["500"] * 10 for r in references}
    with FakeJudgeServer([r["instruction"] for r in references], plan) as server:
        judge = OpenAIChatJudge(server.base_url, "fake-judge", timeout=CLIENT_TIMEOUT_S)
        result = J.judge_outputs(
            out_path,
            ref_path,
            judge,
            tmp_path / "run",
            annotator=pairwise_v1(),
            retry=fast_policy([], max_attempts=3, max_total_retries=4),
        )
        assert server.count() == len(references) + 4 == result.stats.requests
    assert all(a["preference"] is None for a in result.annotations)
    reasons = [a["null_reason"] for a in result.annotations]
    assert sum("retry budget (4) is spent" in r for r in reasons) == len(references) - 2
    assert sum("gave up after 3 attempts" in r for r in reasons) == 2
    assert result.metrics["win_rate"] is None and result.metrics["n_null"] == len(references)


def test_unauthorized_stops_the_run_at_once_and_redacts_the_key(tmp_path, monkeypatch, capsys, caplog):
    references = synthetic_references(5)
    ref_path, out_path, _ = write_pair(tmp_path, references)
    with FakeJudgeServer(
        [r["instruction"] for r in references], {r["instruction"]: ["401"] * 3 for r in references}
    ) as server:
        judge = OpenAIChatJudge(server.base_url, "fake-judge", api_key=API_KEY, timeout=CLIENT_TIMEOUT_S)
        with pytest.raises(J.JudgeFatalError, match="HTTP 401") as info:
            J.judge_outputs(
                out_path, ref_path, judge, tmp_path / "lib", annotator=pairwise_v1(), retry=fast_policy([])
            )
        assert server.count() == 1 and API_KEY not in str(info.value) and "[REDACTED]" in str(info.value)

        monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
        with caplog.at_level(logging.DEBUG):
            rc = main(
                [
                    "judge",
                    "--annotator",
                    "symnoise_pairwise_v1",
                    str(out_path),
                    "--reference",
                    str(ref_path),
                    "--base-url",
                    server.base_url,
                    "--model",
                    "fake-judge",
                    "--out",
                    str(tmp_path / "cli"),
                    "--workers",
                    "1",
                ]
            )
        assert server.count() == 2
    err = capsys.readouterr().err
    assert rc == 1 and "HTTP 401" in err and "API key" in err
    assert API_KEY not in err + caplog.text


def test_api_key_appears_in_no_file_and_no_log(tmp_path, monkeypatch, capsys, caplog):
    references = synthetic_references(8)
    ref_path, out_path, expected = write_pair(tmp_path, references)
    ins = [r["instruction"] for r in references]
    plan = {ins[0]: ["500"], ins[1]: ["garbage"], ins[2]: ["429"], ins[3]: ["500"] * 4, ins[4]: ["drop"]}
    monkeypatch.setenv("SYMNOISE_JUDGE_API_KEY", API_KEY)
    monkeypatch.setenv("SYMNOISE_JUDGE_MODEL", "fake-judge")
    with FakeJudgeServer(ins, plan) as server:
        monkeypatch.setenv("SYMNOISE_JUDGE_BASE_URL", server.base_url)
        with caplog.at_level(logging.DEBUG):
            rc = main(
                [
                    "judge",
                    "--annotator",
                    "symnoise_pairwise_v1",
                    str(out_path),
                    "--reference",
                    str(ref_path),
                    "--out",
                    str(tmp_path / "out"),
                    "--max-retries",
                    "3",
                    "--backoff",
                    "0.001",
                    "--timeout",
                    str(CLIENT_TIMEOUT_S),
                ]
            )
        assert server.auth == {f"Bearer {API_KEY}"}  # the key was really sent, so there was something to leak
    captured = capsys.readouterr()
    assert rc == 3 and "win_rate" in captured.out and "n_null 1" in captured.out  # one example has no verdict
    assert "incomplete: 1 of 8 examples have no verdict (unparsable 0, failed 1)" in captured.err
    assert "[REDACTED]" in caplog.text  # the server echoed the key in error bodies; the client hid it
    assert API_KEY not in captured.out + captured.err + caplog.text
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) >= 5
    for path in files:
        assert API_KEY.encode() not in path.read_bytes(), path
    annotations = json.loads((tmp_path / "out" / layout.ANNOTATIONS).read_text())
    assert [a["preference"] for a in annotations] == [
        None if i == 3 else expected[x] for i, x in enumerate(ins)
    ]


@pytest.mark.floor
def test_killed_run_resumes_without_paying_twice(tmp_path, monkeypatch, capsys):
    references = synthetic_references(10)
    ref_path, out_path, expected = write_pair(tmp_path, references)
    ins = [r["instruction"] for r in references]
    out_dir, k = tmp_path / "out", 4
    env = {**os.environ, "SYMNOISE_JUDGE_API_KEY": API_KEY, "PYTHONPATH": str(Path(J.__file__).parents[2])}
    with FakeJudgeServer(ins, hang_after=k) as server:
        cmd = [
            sys.executable,
            "-m",
            "symnoise.cli.main",
            "judge",
            "--annotator",
            "symnoise_pairwise_v1",
            str(out_path),
            "--reference",
            str(ref_path),
            "--base-url",
            server.base_url,
            "--model",
            "fake-judge",
            "--out",
            str(out_dir),
            "--workers",
            "1",
        ]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 30
            while server.count("hang") == 0 and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.02)
            assert server.count("hang") == 1, proc.communicate(timeout=5)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        server.release.set()
        assert sum(server.verdicts.values()) == k
        cache_file = out_dir / layout.JUDGE_CACHE
        assert len(cache_file.read_text().splitlines()) == k
        assert not (out_dir / layout.ANNOTATIONS).exists()
        with cache_file.open("a") as handle:
            handle.write('{"key": "torn')  # as if killed in the middle of writing a verdict

        server.hang_after = None
        monkeypatch.setenv("SYMNOISE_JUDGE_API_KEY", API_KEY)
        before = server.count()
        rc = main(
            [
                "judge",
                "--annotator",
                "symnoise_pairwise_v1",
                str(out_path),
                "--reference",
                str(ref_path),
                "--base-url",
                server.base_url,
                "--model",
                "fake-judge",
                "--out",
                str(out_dir),
                "--workers",
                "2",
            ]
        )
        assert rc == 0
        assert server.count() - before == len(ins) - k
        assert server.verdicts == Counter({i: 1 for i in ins})  # every example paid for exactly once
    annotations = json.loads((out_dir / layout.ANNOTATIONS).read_text())
    assert [a["preference"] for a in annotations] == [expected[i] for i in ins]
    out = capsys.readouterr()
    assert f"cached {k}" in out.err and "n_null 0" in out.out
    print(
        f"\nresume: killed after {k} verdicts, re-run requests {server.count() - before}, "
        f"total verdicts {sum(server.verdicts.values())}"
    )


def test_bad_input_is_rejected_before_any_request(tmp_path, monkeypatch, capsys):
    references = synthetic_references(3)
    ref_path, out_path, _ = write_pair(tmp_path, references)
    rows = json.loads(out_path.read_text())
    cases = {
        "missing.json": (None, "file not found"),
        "dict.json": ({"instruction": "x"}, "expected a JSON list"),
        "nofield.json": ([rows[0], {"instruction": rows[1]["instruction"]}], "row 1 has no field 'output'"),
        "number.json": ([rows[0], rows[1], {**rows[2], "output": 3}], "row 2 field 'output' is int"),
        "unknown.json": (
            [rows[0], {**rows[1], "instruction": "Never asked"}],
            "no reference output: 'Never asked'",
        ),
        "broken.json": ("[{", "not valid JSON"),
    }
    monkeypatch.setenv("SYMNOISE_JUDGE_API_KEY", API_KEY)
    with FakeJudgeServer([r["instruction"] for r in references]) as server:
        for name, (content, message) in cases.items():
            path = tmp_path / name
            if content is not None:
                path.write_text(content if isinstance(content, str) else json.dumps(content))
            with pytest.raises(J.JudgeInputError, match=re.escape(message)) as info:
                load_examples(path, ref_path)
            assert str(path) in str(info.value)
            rc = main(
                [
                    "judge",
                    "--annotator",
                    "symnoise_pairwise_v1",
                    str(path),
                    "--reference",
                    str(ref_path),
                    "--base-url",
                    server.base_url,
                    "--model",
                    "fake-judge",
                    "--out",
                    str(tmp_path / "out"),
                ]
            )
            err = capsys.readouterr().err
            assert rc == 2 and message in err and str(path) in err
        rc = main(
            [
                "judge",
                "--annotator",
                "symnoise_pairwise_v1",
                str(out_path),
                "--data-dir",
                str(tmp_path / "nowhere"),
                "--base-url",
                server.base_url,
                "--model",
                "fake-judge",
            ]
        )
        assert rc == 2 and "--reference" in capsys.readouterr().err
        assert server.count() == 0


def test_cli_finds_the_default_reference_and_honours_limit(tmp_path, shared_data, monkeypatch, capsys):
    outputs = shared_data / "alpaca_eval" / "model_outputs" / "alpaca-7b-neft.json"
    if not outputs.is_file():
        pytest.skip(f"{outputs} not found")
    references = real_references(shared_data, 3)
    rows = json.loads(outputs.read_text())[:3]
    with FakeJudgeServer([r["instruction"] for r in rows]) as server:
        rc = main(
            [
                "judge",
                "--annotator",
                "symnoise_pairwise_v1",
                str(outputs),
                "--data-dir",
                str(shared_data),
                "--limit",
                "3",
                "--base-url",
                server.base_url,
                "--model",
                "fake-judge",
                "--out",
                str(tmp_path / "out"),
                "--seed",
                "7",
            ]
        )
        assert rc == 0 and server.count() == 3
    annotations = json.loads((tmp_path / "out" / layout.ANNOTATIONS).read_text())
    assert [a["output_1"] for a in annotations] == [r["output"] for r in references]
    assert [a["output_2"] for a in annotations] == [r["output"] for r in rows]
    # the fake judge always answers "Output (a)" here (no marker), so the model wins exactly when shown first
    assert [a["preference"] for a in annotations] == [
        2 if model_shown_first(7, r["instruction"]) else 1 for r in rows
    ]
    assert "n_total 3" in capsys.readouterr().out
    assert (
        main(
            [
                "judge",
                "--annotator",
                "symnoise_pairwise_v1",
                str(outputs),
                "--limit",
                "0",
                "--model",
                "m",
                "--base-url",
                server.base_url,
            ]
        )
        == 2
    )


# ------------------------------------------------------------------------------------------ other judges


@pytest.mark.floor
def test_hf_judge_plumbing_yields_judged_or_null(tmp_path, tiny_tokenizer):
    from conftest import make_tiny_model

    folder = tmp_path / "tiny-judge"
    # The judge template alone is ~300 tokens of the tiny tokenizer: more than the default 256 positions.
    make_tiny_model("llama", max_position_embeddings=JUDGE_POSITIONS).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    references = synthetic_references(4)
    ref_path, out_path, _ = write_pair(tmp_path, references)
    judge = HFJudge(str(folder), max_new_tokens=4)
    result = J.judge_outputs(out_path, ref_path, judge, tmp_path / "run", annotator=pairwise_v1())
    assert len(result.annotations) == 4 and result.stats.requests == 4 + result.stats.reasks
    assert result.stats.reasks == 2 * result.stats.unparsable  # an unparsable answer is asked twice more
    for a in result.annotations:
        assert isinstance(a["raw_completion"], str) and a["judge"] == f"hf:{folder}"
        assert a["annotator"] == PAIRWISE_V1
        assert a["preference"] in (1, 2) or (
            a["preference"] is None and a["null_reason"] == "unparsable verdict"
        )

    def no_more_calls(messages):
        raise AssertionError("a cached verdict was asked again")

    judge.complete = no_more_calls
    again = J.judge_outputs(out_path, ref_path, judge, tmp_path / "run", annotator=pairwise_v1())
    assert again.stats.cached == 4
    assert [a["preference"] for a in again.annotations] == [a["preference"] for a in result.annotations]


JUDGE_POSITIONS = 512  # the tiny Llama's context as a judge; the judge template alone is ~300 tokens
LONG_WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet")


def long_text(tag: str, n_words: int) -> str:
    return " ".join(f"{tag}{LONG_WORDS[i % len(LONG_WORDS)]}{i}" for i in range(n_words))


def spied_hf_judge(tokenizer, max_new_tokens: int = 4):
    """An HFJudge on a tiny Llama with JUDGE_POSITIONS positions recording the messages and ids given to the model."""
    from conftest import make_tiny_model

    judge = HFJudge(
        "tiny-judge",
        model=make_tiny_model("llama", max_position_embeddings=JUDGE_POSITIONS),
        tokenizer=tokenizer,
        max_new_tokens=max_new_tokens,
    )
    seen = {"messages": [], "input_ids": []}
    complete, generate = judge.complete, judge.model.generate

    def spy_complete(messages):
        seen["messages"].append(messages)
        return complete(messages)

    def spy_generate(**kwargs):
        seen["input_ids"].append(kwargs["input_ids"][0].tolist())
        return generate(**kwargs)

    judge.complete, judge.model.generate = spy_complete, spy_generate
    return judge, seen


def shown(example: Example, seed: int = 0) -> tuple[str, str]:
    """(output_a, output_b) in the order the runner shows them."""
    if model_shown_first(seed, example.instruction):
        return example.output, example.reference
    return example.reference, example.output


def example(instruction: str, reference: str, output: str) -> Example:
    return Example(instruction, reference, output, "ref-model", "tiny-model", "synthetic")


def test_hf_judge_context_is_the_smaller_known_limit(tiny_tokenizer):
    from types import SimpleNamespace

    def model(positions):
        return SimpleNamespace(config=SimpleNamespace(max_position_embeddings=positions))

    assert tiny_tokenizer.model_max_length > 1e9  # no limit set: ignored
    assert context_length(tiny_tokenizer, model(256)) == 256
    assert context_length(SimpleNamespace(model_max_length=128), model(256)) == 128
    assert context_length(SimpleNamespace(model_max_length=4096), model(2048)) == 2048
    assert context_length(SimpleNamespace(model_max_length=int(1e30)), SimpleNamespace()) is None
    assert (
        context_length(SimpleNamespace(model_max_length=512), SimpleNamespace(config=SimpleNamespace()))
        == 512
    )


@pytest.mark.floor
def test_hf_judge_shortens_both_long_outputs_to_fit_its_context(tmp_path, tiny_tokenizer):
    judge, seen = spied_hf_judge(tiny_tokenizer)
    assert judge.context_length == JUDGE_POSITIONS
    instruction = "Task 1: " + long_text("i", 4)
    short = example("Task 0: say hi.", "Hi there, friend.", "Hello!")
    long = example(instruction, long_text("r", 400), long_text("m", 300))
    uneven = example("Task 2: " + long_text("j", 5), "A short reference.", long_text("u", 500))
    examples = [short, long, uneven]
    full = [judge.prompt_tokens(build_messages(ex.instruction, *shown(ex))) for ex in examples]
    assert (
        full[0] + 4 <= JUDGE_POSITIONS and full[1] > 1000 and full[2] > 1000
    )  # only the last two must be cut

    annotations, stats = J.judge_examples(
        examples, judge, JudgmentCache(tmp_path / "cache.jsonl"), annotator=pairwise_v1(), max_reasks=0
    )
    assert stats.requests == 3 and stats.failed == 0 and stats.truncated == 2
    for ids in seen["input_ids"]:
        assert len(ids) + judge.max_new_tokens <= JUDGE_POSITIONS  # the prompt fits, with room to answer

    # A short example is shown byte for byte as built, and recorded as not truncated.
    assert seen["messages"][0] == build_messages(short.instruction, *shown(short))
    assert (
        seen["input_ids"][0]
        == tiny_tokenizer(judge._prompt(build_messages(short.instruction, *shown(short))))["input_ids"]
    )
    assert annotations[0]["prompt_truncated"] is None

    # The long one: instruction and template whole, both outputs cut from their ends to the same allowance.
    user = seen["messages"][1][1]["content"]
    assert seen["messages"][1][0]["content"] == PAIRWISE_V1_SYSTEM
    body = re.fullmatch(
        r"Which response follows the instruction better\?\n\n## Instruction\n(.*)\n\n"
        r"## Output \(a\)\n(.*)\n\n## Output \(b\)\n(.*)\n\n"
        r'Reply with exactly "Output \(a\)" or "Output \(b\)" and nothing else\.',
        user,
        re.S,
    )
    assert body and body.group(1) == instruction
    for kept, original in zip(body.group(2, 3), shown(long), strict=True):
        assert 0 < len(kept) < len(original) and original.startswith(kept)
    cut = annotations[1]["prompt_truncated"]
    assert cut["context_tokens"] == JUDGE_POSITIONS and cut["max_new_tokens"] == 4
    assert cut["prompt_tokens"][0] == full[1]
    assert (
        JUDGE_POSITIONS - 4 - 10
        <= cut["prompt_tokens"][1]
        == len(seen["input_ids"][1])
        <= JUDGE_POSITIONS - 4
    )
    (ref_before, ref_after), (out_before, out_after) = cut["output_1_tokens"], cut["output_2_tokens"]
    assert ref_before > out_before > ref_after == out_after > 20  # evenly: the same number of tokens kept
    assert ref_before == len(tiny_tokenizer(long.reference, add_special_tokens=False)["input_ids"])
    assert (
        annotations[1]["output_1"] == long.reference and annotations[1]["output_2"] == long.output
    )  # untouched

    # Uneven: the short reference is kept whole and the long output gets the rest of the room.
    user = seen["messages"][2][1]["content"]
    assert "\nA short reference.\n" in user
    cut = annotations[2]["prompt_truncated"]
    assert (
        cut["output_1_tokens"][0] == cut["output_1_tokens"][1]
        and cut["output_2_tokens"][1] < cut["output_2_tokens"][0]
    )
    assert cut["output_2_tokens"][1] > ref_after  # more than the even share of the long pair above

    # A re-run takes the verdicts from the cache and still reports which prompts were cut.
    again, stats = J.judge_examples(
        examples, judge, JudgmentCache(tmp_path / "cache.jsonl"), annotator=pairwise_v1(), max_reasks=0
    )
    assert stats.cached == 3 and stats.requests == 0 and stats.truncated == 2
    assert [a["prompt_truncated"] for a in again] == [a["prompt_truncated"] for a in annotations]

    with pytest.raises(J.JudgeInputError, match="exceeds the context"):  # unfitted messages are refused
        judge.complete(build_messages(long.instruction, long.reference, long.output))


def test_hf_judge_refuses_an_instruction_that_does_not_fit(tmp_path, tiny_tokenizer, capsys):
    from conftest import make_tiny_model

    judge, seen = spied_hf_judge(tiny_tokenizer)
    examples = [example("Task 0: say hi.", "Hi.", "Hello!"), example(long_text("x", 300), "Ok.", "Fine.")]
    with pytest.raises(
        J.JudgeInputError,
        match=r"example 1 \(row 1 of the outputs\): the judge prompt is \d+ "
        r"tokens without the two outputs \(the instruction alone \d+\) and 4 tokens must be "
        r"generated, but the judge hf:tiny-judge has a context of 512 tokens",
    ):
        J.judge_examples(
            examples, judge, JudgmentCache(tmp_path / "cache.jsonl"), annotator=pairwise_v1(), max_reasks=0
        )
    assert len(seen["input_ids"]) <= 1  # the long instruction never reached the model

    folder = tmp_path / "tiny-judge"
    make_tiny_model("llama", max_position_embeddings=JUDGE_POSITIONS).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    ref_path, out_path = tmp_path / "reference.jsonl", tmp_path / "model_outputs.json"
    ref_path.write_text(
        "".join(
            json.dumps({"instruction": ex.instruction, "output": ex.reference}) + "\n" for ex in examples
        ),
        encoding="utf-8",
    )
    out_path.write_text(json.dumps([{"instruction": ex.instruction, "output": ex.output} for ex in examples]))
    rc = main(
        [
            "judge",
            "--annotator",
            "symnoise_pairwise_v1",
            str(out_path),
            "--reference",
            str(ref_path),
            "--judge",
            "hf",
            "--model",
            str(folder),
            "--out",
            str(tmp_path / "run"),
        ]
    )
    assert rc == 2 and "example 1 (row 1 of the outputs)" in capsys.readouterr().err

    # Long outputs instead: judged, and the CLI says how many prompts were cut.
    long = example("Task 9: say more.", long_text("r", 300), long_text("m", 300))
    ref_path.write_text(json.dumps({"instruction": long.instruction, "output": long.reference}) + "\n")
    out_path.write_text(json.dumps([{"instruction": long.instruction, "output": long.output}]))
    rc = main(
        [
            "judge",
            "--annotator",
            "symnoise_pairwise_v1",
            str(out_path),
            "--reference",
            str(ref_path),
            "--judge",
            "hf",
            "--model",
            str(folder),
            "--out",
            str(tmp_path / "run"),
        ]
    )
    assert "1 judge prompt(s) had outputs shortened" in capsys.readouterr().err
    (annotation,) = json.loads((tmp_path / "run" / layout.ANNOTATIONS).read_text())
    assert rc == (
        0 if annotation["preference"] is not None else 3
    )  # 3: the tiny judge's answer was unparsable
    assert (
        annotation["prompt_truncated"]["prompt_tokens"][1] <= JUDGE_POSITIONS - 12
    )  # the CLI's 12 new tokens


def test_alpaca_eval_judge_without_the_package_says_how_to_install(tmp_path, capsys, monkeypatch):
    import sys

    for name in [m for m in sys.modules if m == "alpaca_eval" or m.startswith("alpaca_eval.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "alpaca_eval", None)  # what an environment without the package gives
    with pytest.raises(J.JudgeFatalError, match="pip install alpaca-eval"):
        AlpacaEvalJudge()
    ref_path, out_path, _ = write_pair(tmp_path, synthetic_references(2))
    rc = main(
        [
            "judge",
            "--annotator",
            "symnoise_pairwise_v1",
            str(out_path),
            "--reference",
            str(ref_path),
            "--judge",
            "alpaca_eval",
        ]
    )
    assert rc == 1 and "pip install alpaca-eval" in capsys.readouterr().err
