"""Sharing a run: the W&B run's project, entity, name and tags; the upload to the hub with symnoise's model card
(against a local stand-in for the hub API, no network); and a model card that states what was trained."""

import fnmatch
import importlib.util
import shutil
import sys
import textwrap

import pytest
import yaml
from test_train import tiny_config

from symnoise.train import ConfigError, sharing, train
from symnoise.train.config import validate_config
from symnoise.train.metrics import model_card

WANDB_STAND_IN = '''
"""A stand-in for the wandb package: records what transformers and symnoise hand it."""
import sys

run = None
inits, logs, finished = [], [], []


class _Config(dict):
    def update(self, values=None, allow_val_change=False, **kwargs):
        super().update(values or {}, **kwargs)


config = _Config()
summary = {}


class Run:
    def __init__(self, kwargs):
        self.kwargs, self.id, self.name, self.url, self.summary = kwargs, "stand-in", kwargs.get("name"), "local", {}

    def finish(self):
        finished.append(self.kwargs)
        sys.modules[__name__].run = None

    def log_artifact(self, *args, **kwargs):
        pass

    def _label(self, **kwargs):
        pass


def init(**kwargs):
    global run
    inits.append(kwargs)
    run = Run(kwargs)
    return run


def log(values, **kwargs):
    logs.append(dict(values))


def define_metric(*args, **kwargs):
    pass


def termwarn(*args, **kwargs):
    pass


def watch(*args, **kwargs):
    pass


def finish():
    if run is not None:
        run.finish()
'''


def config_data(tmp_path, **training):
    return {
        "model": {"name": "m"},
        "data": {"path": "d.json"},
        "training": {"output_dir": str(tmp_path / "my-run"), **training},
    }


def test_wandb_settings_come_from_the_config_then_the_environment(tmp_path):
    env = {
        "WANDB_PROJECT": "env-project",
        "WANDB_ENTITY": "env-team",
        "WANDB_TAGS": "a, b,",
        "WANDB_NAME": "env-n",
        "WANDB_RUN_GROUP": "env-group",
    }
    bare = validate_config(config_data(tmp_path, report_to=["wandb"]))
    assert sharing.wandb_settings(bare, {}) == {
        "project": "symnoise",
        "entity": None,
        "name": "my-run",
        "tags": None,
        "group": None,
    }
    assert sharing.wandb_settings(bare, env) == {
        "project": "env-project",
        "entity": "env-team",
        "name": "env-n",
        "tags": ["a", "b"],
        "group": "env-group",
    }
    full = validate_config(
        config_data(
            tmp_path,
            report_to=["wandb"],
            run_name="alpha5",
            wandb={"project": "p", "entity": "team", "tags": ["x"], "group": "g"},
        )
    )
    assert sharing.wandb_settings(full, env) == {
        "project": "p",
        "entity": "team",
        "name": "alpha5",
        "tags": ["x"],
        "group": "g",
    }


def test_hub_model_id_is_checked_up_front(tmp_path):
    assert validate_config(config_data(tmp_path, hub_model_id="me/tiny-1.5b_v2")).training.hub_model_id
    with pytest.raises(ConfigError, match="training.hub_model_id: String should match pattern"):
        validate_config(config_data(tmp_path, hub_model_id="me/tiny model"))


def test_wandb_section_needs_wandb_in_report_to(tmp_path):
    with pytest.raises(ConfigError, match="wandb is set but report_to does not include wandb"):
        validate_config(config_data(tmp_path, wandb={"project": "p"}))


def test_missing_wandb_is_a_clear_error_before_the_model_loads(
    base_model, alpaca_file, tmp_path, monkeypatch
):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        sharing.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "wandb" else real_find_spec(name, *a),
    )
    config = tiny_config(
        "no/such-model-anywhere",
        alpaca_file,
        tmp_path / "run",
        training__report_to=["wandb"],
        training__wandb={"project": "p"},
    )
    with pytest.raises(ConfigError, match=r'pip install "symnoise\[wandb\]"'):
        train(config)
    assert not (tmp_path / "run").exists()  # refused before even the run directory was made


@pytest.fixture
def wandb_stand_in(tmp_path, monkeypatch):
    package = tmp_path / "stand_in" / "wandb"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent(WANDB_STAND_IN))
    (package / "sdk" / "lib").mkdir(
        parents=True
    )  # transformers imports wandb.sdk.lib.config_util.ConfigError
    (package / "sdk" / "__init__.py").write_text("")
    (package / "sdk" / "lib" / "__init__.py").write_text("")
    (package / "sdk" / "lib" / "config_util.py").write_text("class ConfigError(Exception):\n    pass\n")
    monkeypatch.syspath_prepend(str(package.parent))
    monkeypatch.delitem(sys.modules, "wandb", raising=False)
    import wandb

    assert wandb.__file__.startswith(str(package))
    yield wandb
    for name in [name for name in sys.modules if name == "wandb" or name.startswith("wandb.")]:
        sys.modules.pop(name)


def test_training_logs_into_the_configured_wandb_run(base_model, alpaca_file, tmp_path, wandb_stand_in):
    out = tmp_path / "run"
    train(
        tiny_config(
            base_model,
            alpaca_file,
            out,
            training__max_steps=2,
            training__report_to=["wandb"],
            training__run_name="alpha5-seed0",
            training__wandb={"project": "noise", "entity": "lab", "tags": ["symnoise", "tiny"]},
        )
    )
    assert len(wandb_stand_in.inits) == 1
    init = wandb_stand_in.inits[0]
    assert (init["project"], init["entity"], init["name"], init["tags"]) == (
        "noise",
        "lab",
        "alpha5-seed0",
        ["symnoise", "tiny"],
    )
    assert init["config"]["noise"]["method"] == "symnoise" and init["dir"] == str(out)
    losses = [entry for entry in wandb_stand_in.logs if "train/loss" in entry]
    assert [entry["train/global_step"] for entry in losses] == [1, 2]  # the Trainer logged into our run
    assert wandb_stand_in.finished and wandb_stand_in.run is None


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb is not installed")
def test_real_wandb_in_offline_mode(base_model, alpaca_file, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    train(
        tiny_config(
            base_model,
            alpaca_file,
            out,
            training__max_steps=2,
            training__report_to=["wandb"],
            training__run_name="offline-run",
            training__wandb={"project": "noise", "tags": ["t"]},
        )
    )
    import wandb

    assert wandb.run is None  # finished by symnoise
    assert list((out / "wandb").glob("offline-run-*"))


class FakeHubApi:
    """Stands in for huggingface_hub.HfApi: records the repository and copies what would be uploaded."""

    calls: list = []

    def __init__(self, remote):
        self.remote = remote

    def create_repo(self, repo_id, private=None, exist_ok=False, repo_type=None, **kwargs):
        self.calls.append(("create_repo", repo_id, private, exist_ok, repo_type))
        return repo_id

    def upload_folder(
        self, repo_id, folder_path, repo_type=None, ignore_patterns=(), commit_message=None, **kw
    ):
        from pathlib import Path

        self.calls.append(("upload_folder", repo_id, repo_type, commit_message))
        for path in Path(folder_path).rglob("*"):
            relative = path.relative_to(folder_path).as_posix()
            if path.is_file() and not any(fnmatch.fnmatch(relative, p) for p in ignore_patterns):
                (self.remote / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, self.remote / relative)


def test_push_to_hub_uploads_the_final_model_and_card(base_model, alpaca_file, tmp_path, monkeypatch):
    import huggingface_hub

    remote = tmp_path / "remote"
    remote.mkdir()
    FakeHubApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda: FakeHubApi(remote))
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_stand_in")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    out = tmp_path / "tiny-symnoise"
    result = train(
        tiny_config(base_model, alpaca_file, out, training__push_to_hub=True, training__max_steps=2)
    )
    assert FakeHubApi.calls[0] == ("create_repo", "tiny-symnoise", True, True, "model")  # private by default
    assert FakeHubApi.calls[1][:3] == ("upload_folder", "tiny-symnoise", "model")
    uploaded = {p.relative_to(remote).as_posix() for p in remote.rglob("*") if p.is_file()}
    assert {
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "README.md",
        "config.yaml",
        "symnoise_run.json",
    } <= uploaded
    assert not any(name.startswith(("checkpoint-", "runs/", "tmp-")) for name in uploaded)
    assert (out / "run_start.json").is_file() and {"run_start.json", "symnoise.lock"}.isdisjoint(uploaded)
    assert (remote / "README.md").read_text() == (out / "README.md").read_text()
    check_card((remote / "README.md").read_text(), steps=result.steps)


def check_card(card, steps):
    """The card of a 2-step run over 36 examples at 8 per step: 0.80 epochs (as the Trainer logs), not the
    configured 3 epochs."""
    from huggingface_hub import ModelCard

    metadata = ModelCard(card).data.to_dict()
    assert metadata["tags"].count("symnoise") == 1 and len(metadata["tags"]) == len(set(metadata["tags"]))
    assert metadata["library_name"] == "transformers" and metadata["pipeline_tag"] == "text-generation"
    assert "datasets" not in metadata  # a local file is not a hub dataset id
    assert steps == 2 and "| trained | 2 optimizer steps, 0.80 epochs |" in card
    assert "a local file (train.json)" in card and "pypi.org" not in card and "3.0 /" not in card


def test_push_to_hub_is_checked_before_anything_loads(alpaca_file, tmp_path, monkeypatch):
    import huggingface_hub

    config = tiny_config("no/such-model-anywhere", alpaca_file, tmp_path / "run", training__push_to_hub=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE is set"):
        train(config)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(ConfigError, match="needs a Hugging Face token: run `hf auth login` or set HF_TOKEN"):
        train(config)


def test_model_card_of_a_lora_run_on_a_hub_dataset(tmp_path):
    config = validate_config(
        {
            "model": {"name": "Qwen/Qwen2.5-0.5B-Instruct", "license": "apache-2.0"},
            "data": {"path": "tatsu-lab/alpaca"},
            "noise": {"method": "neftune", "alpha": 5},
            "lora": {"enabled": True, "r": 8, "alpha": 16},
            "training": {"output_dir": str(tmp_path / "qwen-neft"), "epochs": 3},
        }
    )
    card = model_card(config, "chat", steps=1218, final_loss=1.23456, epochs=3.0)
    metadata = yaml.safe_load(card.split("---")[1])
    assert metadata == {
        "library_name": "peft",
        "base_model": "Qwen/Qwen2.5-0.5B-Instruct",
        "license": "apache-2.0",
        "pipeline_tag": "text-generation",
        "datasets": ["tatsu-lab/alpaca"],
        "tags": ["symnoise", "noisy-embeddings", "neftune", "lora", "text-generation"],
    }
    for row in (
        "| noise method | `uniform` |",
        "| alpha | 5.0 |",
        "| trained | 1218 optimizer steps, 3.00 epochs |",
        "| licence of the base model | apache-2.0 |",
        "| training data | tatsu-lab/alpaca |",
        "| LoRA | r=8, alpha=16.0, dropout=0.05",
        "| final training loss | 1.2346 |",
    ):
        assert row in card, row


def test_a_failed_upload_says_the_run_is_saved_and_how_to_retry(tmp_path):
    class FailingApi(FakeHubApi):
        def upload_folder(self, **kwargs):
            raise ConnectionError("no route to host")

    config = validate_config(config_data(tmp_path, push_to_hub=True, hub_model_id="me/tiny"))
    with pytest.raises(sharing.UploadError) as error:
        sharing.push_to_hub(config, tmp_path / "my-run", api=FailingApi(tmp_path))
    message = str(error.value)
    assert f"saved in {tmp_path / 'my-run'}" in message and "ConnectionError: no route to host" in message
    assert f"hf upload me/tiny {tmp_path / 'my-run'} --private" in message


def test_model_card_lists_every_source_of_a_mixture(tmp_path):
    """With a `data.datasets` mixture (no single data.path) the card names each source; hub ids go in metadata."""
    from types import SimpleNamespace

    config = validate_config(config_data(tmp_path))
    mixture = SimpleNamespace(
        path=None,
        max_length=512,
        datasets=[
            SimpleNamespace(path="tatsu-lab/alpaca"),
            SimpleNamespace(path=str(tmp_path / "mine.jsonl")),
        ],
    )
    card = model_card(
        SimpleNamespace(
            model=config.model, noise=config.noise, lora=config.lora, training=config.training, data=mixture
        ),
        "alpaca",
        10,
        None,
        1.0,
    )
    assert yaml.safe_load(card.split("---")[1])["datasets"] == ["tatsu-lab/alpaca"]
    assert "| training data | tatsu-lab/alpaca + a local file (mine.jsonl) |" in card


def test_the_card_names_a_file_of_every_kind_the_reader_takes_as_local():
    """A path that does not exist here is told by its name: every suffix the data reader takes, gzipped JSON and
    TSV included, names a local file, not a hub dataset for the card's metadata."""
    from symnoise.data.file_kinds import FILE_SUFFIXES
    from symnoise.train.metrics import is_hub_dataset

    assert [suffix for suffix in FILE_SUFFIXES if is_hub_dataset(f"data/train{suffix}")] == []
    assert is_hub_dataset("tatsu-lab/alpaca") and not is_hub_dataset("./alpaca")
