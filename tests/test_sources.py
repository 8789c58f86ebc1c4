"""Where evaluation data comes from (`symnoise.evaluation.sources`), offline: a stand-in for the hub (a Hugging Face
cache holding the tatsu-lab/alpaca_eval file, read by the real hub client in offline mode), the local data folder,
the flag > config > environment order, and the reachability answers."""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub.constants
import pytest
import yaml

from symnoise.evaluation import sources
from symnoise.generation import load_prompts

RECORDS = [
    {
        "instruction": f"Question {i}?",
        "output": f"Reference {i}.",
        "generator": "text_davinci_003",
        "dataset": "helpful_base",
    }
    for i in range(3)
]


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """A hub cache holding tatsu-lab/alpaca_eval's alpaca_eval.json (and nothing else), used in offline mode."""
    cache = tmp_path / "hub"
    repo = cache / "datasets--tatsu-lab--alpaca_eval"
    (repo / "snapshots" / "0123abc").mkdir(parents=True)
    (repo / "snapshots" / "0123abc" / "alpaca_eval.json").write_text(json.dumps(RECORDS), encoding="utf-8")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc", encoding="utf-8")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv(sources.DATA_DIR_ENV, raising=False)
    return cache


def test_data_folder_order_is_flag_then_config_then_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(sources.DATA_DIR_ENV, raising=False)
    assert sources.data_dir() is None
    monkeypatch.setenv(sources.DATA_DIR_ENV, str(tmp_path / "env"))
    assert sources.data_dir() == tmp_path / "env"
    assert sources.data_dir(config=tmp_path / "config") == tmp_path / "config"
    assert sources.data_dir(tmp_path / "flag", tmp_path / "config") == tmp_path / "flag"


def test_without_a_data_folder_the_hub_file_is_read(hub_cache):
    path = sources.alpaca_eval_file("alpaca_eval")
    assert path == hub_cache / "datasets--tatsu-lab--alpaca_eval/snapshots/0123abc/alpaca_eval.json"
    assert [p.instruction for p in load_prompts(path)] == [r["instruction"] for r in RECORDS]
    assert sources.check_alpaca_eval("alpaca_eval") is None
    assert sources.resolve_alpaca_eval("alpaca_eval").describe() == (
        "alpaca_eval: hub dataset tatsu-lab/alpaca_eval, file alpaca_eval.json"
    )


def test_a_hub_file_that_cannot_be_fetched_is_named(hub_cache):
    assert "not in the hub cache" in sources.check_alpaca_eval("alpaca_eval_2")
    with pytest.raises(sources.SourceError) as error:
        sources.alpaca_eval_file("alpaca_eval_2")
    message = str(error.value)
    assert "alpaca_eval_gpt4_baseline.json" in message and "tatsu-lab/alpaca_eval" in message
    assert "--data-dir" in message and sources.DATA_DIR_ENV in message
    with pytest.raises(sources.SourceError, match="unknown AlpacaEval source 'alpaca_eval_3'"):
        sources.alpaca_eval_file("alpaca_eval_3")


def test_a_named_data_folder_wins_over_the_hub(shared_data, hub_cache, tmp_path, monkeypatch):
    path = sources.alpaca_eval_file("alpaca_eval", shared_data)
    assert path == shared_data / "alpaca_eval/alpaca_eval_ae1_reference_text_davinci_003.jsonl"
    assert len(load_prompts(path)) == 805
    assert sources.alpaca_eval_file("alpaca_eval_2", shared_data).name == "gpt4_1106_preview.json"
    monkeypatch.setenv(sources.DATA_DIR_ENV, str(shared_data))  # the CLI's default reads the environment
    from symnoise.cli.generate import default_prompts

    assert default_prompts() == path
    with pytest.raises(sources.SourceError, match="has no alpaca_eval/alpaca_eval_ae1_reference"):
        default_prompts(tmp_path)  # a named folder without the file is an error, never a silent download
    assert "not found" in sources.check_alpaca_eval("alpaca_eval", tmp_path)


class FakeHub:
    """Answers like HfApi's file_exists / repo_exists, or fails like a network error."""

    def __init__(self, exists: bool | Exception):
        self.exists, self.calls = exists, []

    def _answer(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        if isinstance(self.exists, Exception):
            raise self.exists
        return self.exists

    file_exists = repo_exists = _answer


def test_online_reachability_asks_the_hub(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    hub = FakeHub(True)
    assert sources.check_alpaca_eval("alpaca_eval", api=hub) is None
    assert hub.calls == [(("tatsu-lab/alpaca_eval", "alpaca_eval.json"), {"repo_type": "dataset"})]
    assert sources.check_hub_repo("org/model", "model", api=FakeHub(False)).startswith(
        "no such model on the hub"
    )
    assert sources.check_alpaca_eval("alpaca_eval", api=FakeHub(False)) == "no such file on the hub"
    problem = sources.check_hub_repo("org/model", api=FakeHub(ConnectionError("no route")))
    assert problem == "cannot reach the hub (ConnectionError: no route)"


def test_offline_reachability_looks_in_the_hub_cache(hub_cache):
    assert sources.check_hub_repo("tatsu-lab/alpaca_eval", "dataset") is None
    assert "not in the hub cache" in sources.check_hub_repo("meta-llama/Llama-2-7b-hf", "model")


def test_hub_paths_and_local_paths(tmp_path):
    assert sources.hub_path("hf://datasets/org/data/sub/file.json") == (
        "org/data",
        "dataset",
        "sub/file.json",
    )
    assert sources.hub_path("tatsu-lab/alpaca") == ("tatsu-lab/alpaca", "?", None)
    assert sources.hub_path("../shared/data/x.json") is None and sources.hub_path(str(tmp_path)) is None


def test_leaderboard_source_is_local_only_when_a_folder_is_named(shared_data, tmp_path, hub_cache):
    assert sources.resolve_leaderboard(None).online
    assert sources.resolve_leaderboard(shared_data, online=True).online
    local = sources.resolve_leaderboard(shared_data)
    assert not local.online and sources.check_leaderboard(["arc", "hellaswag", "mmlu"], local) == []
    problems = sources.check_leaderboard(["arc", "mmlu"], sources.resolve_leaderboard(tmp_path))
    assert problems[0].startswith(
        f"leaderboard arc: {tmp_path}/arc/ARC-Challenge/ARC-Challenge-Train.jsonl and 2 more"
    )
    assert problems[1].startswith("leaderboard mmlu:") and len(problems) == 2
    online = sources.check_leaderboard(["hellaswag"], sources.resolve_leaderboard(None))
    assert online == [
        "leaderboard hellaswag: hub dataset Rowan/hellaswag: HF_HUB_OFFLINE is set and the repository "
        "is not in the hub cache"
    ]


def test_harness_datasets_are_those_of_the_installed_harness():
    import lm_eval.tasks

    tasks = Path(lm_eval.tasks.__file__).parent
    arc = yaml.safe_load((tasks / "arc/arc_easy.yaml").read_text())  # arc_challenge includes it
    hellaswag = (tasks / "hellaswag/hellaswag.yaml").read_text()
    mmlu = (tasks / "mmlu/default/_default_template_yaml").read_text()
    assert arc["dataset_path"] == sources.HARNESS_DATASETS["arc"]
    assert f"dataset_path: {sources.HARNESS_DATASETS['hellaswag']}" in hellaswag
    assert f"dataset_path: {sources.HARNESS_DATASETS['mmlu']}" in mmlu
