"""The grid's judge stage with ``kind: openai`` serves the chosen ``alpaca_eval`` annotator exactly as
`symnoise judge --annotator` does: the same request bodies against a local 127.0.0.1 stand-in server, the
annotator's model when none is named, and up-front validation errors for an unknown annotator or a reference set
the annotator was not made for."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
from local_server import clean_judge_environment
from test_grid import tiny_grid
from test_judge_alpaca_eval import API_KEY, ChatServer, chat_response

from symnoise.cli.main import main
from symnoise.evaluation import annotators as A
from symnoise.grid import GridError, validate_grid
from symnoise.grid.runner import stage_judge
from symnoise.layout import OUTPUTS as OUTPUTS_FILE

pytestmark = pytest.mark.slow  # multi-process, subprocess or whole-pipeline tests: `make test` only


@pytest.fixture(autouse=True)
def _clean_judge_environment(monkeypatch):
    clean_judge_environment(monkeypatch)


def any_verdict(body: dict) -> tuple[int, dict]:
    """A parseable answer for each served annotator: log-probs, a tool call or a ranking."""
    if body.get("logprobs"):
        top = [
            {"token": "m", "logprob": math.log(0.3), "bytes": None},
            {"token": "M", "logprob": math.log(0.7), "bytes": None},
        ]
        return 200, chat_response(
            "m",
            logprobs={
                "content": [{"token": "m", "logprob": math.log(0.3), "bytes": None, "top_logprobs": top}]
            },
        )
    if body.get("tools"):
        call = {
            "id": "c",
            "type": "function",
            "function": {"name": "print_best_model", "arguments": json.dumps({"best_output": "Output (b)"})},
        }
        return 200, chat_response(None, tool_calls=[call])
    return 200, chat_response("[{'model': 'model_1', 'rank': 1}, {'model': 'model_2', 'rank': 2}]")


def judged_grid(tmp_path: Path, judge: dict, references: str | None = None):
    data = tiny_grid(tmp_path)
    data["evaluation"]["judge"] = judge
    if references:
        data["evaluation"]["references"] = references
    return validate_grid(data, "g.yaml")


def write_outputs(grid, run_dir: Path) -> Path:
    """Model outputs for every reference instruction of the grid (different from the references)."""
    refs = [json.loads(line) for line in Path(grid.spec.evaluation.references).read_text().splitlines()]
    run_dir.mkdir(parents=True)
    path = run_dir / OUTPUTS_FILE
    path.write_text(
        json.dumps(
            [
                {
                    "instruction": r["instruction"],
                    "output": f"I think: {r['output'].upper()}",
                    "generator": "cell",
                    "dataset": r["dataset"],
                }
                for r in refs
            ]
        )
    )
    return path


def canonical(bodies: list[dict]) -> list[str]:
    return sorted(json.dumps(b, sort_keys=True) for b in bodies)


@pytest.mark.parametrize("annotator", ["alpaca_eval_gpt4", "chatgpt_fn", A.AE2_ANNOTATOR])
def test_grid_judge_sends_what_symnoise_judge_sends_with_the_annotators_model(
    annotator, tmp_path, monkeypatch
):
    grid = judged_grid(tmp_path, {"kind": "openai", "annotator": annotator})
    run_dir = tmp_path / "cell"
    outputs = write_outputs(grid, run_dir)
    ctx = SimpleNamespace(grid=SimpleNamespace(spec=grid.spec), cell=SimpleNamespace(run_dir=run_dir))
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    with ChatServer(any_verdict) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        metrics = stage_judge(ctx)
        grid_bodies = list(server.bodies)
        server.bodies.clear()
        assert (
            main(
                [
                    "judge",
                    str(outputs),
                    "--annotator",
                    annotator,
                    "--reference",
                    grid.spec.evaluation.references,
                    "--out",
                    str(tmp_path / "cli"),
                ]
            )
            == 0
        )
        cli_bodies = list(server.bodies)
    assert len(grid_bodies) == 6 and canonical(grid_bodies) == canonical(cli_bodies)
    assert {b["model"] for b in grid_bodies} == {A.load_annotator(annotator).model}
    assert metrics["n_total"] == 6 and metrics["n_null"] == 0
    written = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert (
        written["annotator"] == annotator
        and written["judge"] == f"openai:{A.load_annotator(annotator).model}"
    )
    assert (run_dir / "eval" / "judge_cache.jsonl").is_file()  # a re-run resumes from it
    with ChatServer(any_verdict) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        assert stage_judge(ctx) == metrics and server.bodies == []


def test_grid_judge_model_and_base_url_from_the_environment(tmp_path, monkeypatch):
    grid = judged_grid(tmp_path, {"kind": "openai", "annotator": "chatgpt_fn"})
    run_dir = tmp_path / "cell"
    write_outputs(grid, run_dir)
    ctx = SimpleNamespace(grid=SimpleNamespace(spec=grid.spec), cell=SimpleNamespace(run_dir=run_dir))
    monkeypatch.setenv("SYMNOISE_JUDGE_MODEL", "my-served-judge")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # SYMNOISE_JUDGE_BASE_URL comes first
    with ChatServer(any_verdict) as server:
        monkeypatch.setenv("SYMNOISE_JUDGE_BASE_URL", server.base_url)
        stage_judge(ctx)
    assert {b["model"] for b in server.bodies} == {"my-served-judge"} and len(server.bodies) == 6


def test_unknown_annotator_is_a_validation_error_naming_the_field(tmp_path):
    with pytest.raises(GridError, match=r"evaluation\.judge\.annotator: .*unknown annotator 'gpt4_nope'"):
        judged_grid(tmp_path, {"kind": "openai", "annotator": "gpt4_nope"})
    with pytest.raises(GridError, match="annotator is read by kind openai only, not by kind alpaca_eval"):
        judged_grid(tmp_path, {"kind": "alpaca_eval", "annotators": "chatgpt_fn", "annotator": "chatgpt_fn"})
    assert (
        judged_grid(tmp_path, {"kind": "openai", "annotator": A.PAIRWISE_V1}).spec.evaluation.judge.annotator
        == A.PAIRWISE_V1
    )


def test_annotator_and_named_references_must_match(tmp_path):
    with pytest.raises(
        GridError,
        match=r"references is alpaca_eval but judge.annotator "
        r"weighted_alpaca_eval_gpt4_turbo compares against alpaca_eval_2's reference outputs",
    ):
        judged_grid(tmp_path, {"kind": "openai", "annotator": A.AE2_ANNOTATOR}, references="alpaca_eval")
    with pytest.raises(GridError, match=r"set references: alpaca_eval$"):
        judged_grid(tmp_path, {"kind": "openai", "annotator": "chatgpt_fn"}, references="alpaca_eval_2")
    grid = judged_grid(tmp_path, {"kind": "openai", "annotator": A.AE2_ANNOTATOR}, references="alpaca_eval_2")
    assert grid.spec.evaluation.references == "alpaca_eval_2"
