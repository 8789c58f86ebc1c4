"""The licence in a run's model card follows the base model: read from the base model's own card (a local folder's
README.md, the hub card from the cache or the hub), with ``model.license`` only as the fallback; a config copied
from a starter and pointed at another model never states the starter model's licence."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import yaml
from conftest import REPO_ROOT, run_symnoise

from symnoise.train import base_license
from symnoise.train.base_license import License, base_model_license, card_license, license_from_card
from symnoise.train.metrics import UNKNOWN_LICENSE

STARTER = "qwen2.5-0.5b/alpaca-symnoise-lora"  # a Qwen (apache-2.0) starter
LICENCE_ROW = "| licence of the base model |"


def card_header(text: str) -> dict:
    return yaml.safe_load(text.split("---")[1])


def licence_row(card: str) -> str:
    [row] = [line for line in card.splitlines() if line.startswith(LICENCE_ROW)]
    return row


# ------------------------------------------------------------------------------------------ reading a card
def test_a_cards_header_gives_its_licence():
    assert license_from_card("---\nlicense: llama3.2\ntags:\n- a\n---\n# Model\n") == License("llama3.2")
    other = "---\nlicense: other\nlicense_name: qwen-research\nlicense_link: https://x.example/LICENSE\n---\n"
    assert license_from_card(other) == License("other", "qwen-research", "https://x.example/LICENSE")
    assert License("other", "qwen-research", "https://x.example/LICENSE").metadata_lines() == [
        "license: other",
        "license_name: qwen-research",
        "license_link: https://x.example/LICENSE",
    ]
    assert License("other", "qwen-research", "https://x.example/LICENSE").label() == (
        "qwen-research (https://x.example/LICENSE)"
    )


@pytest.mark.parametrize(
    "text",
    [
        "# A card without a header\nlicense: mit\n",
        "---\ntags: [a]\n---\n",  # a header without a licence
        "---\nlicense: [unclosed\n---\n",  # a header that is not YAML
        "---\nlicense: mit\n",  # a header that never ends
        "---\nlicense: ''\n---\n",
        "",
    ],
)
def test_a_card_without_a_readable_licence_gives_none(text):
    assert license_from_card(text) is None


def test_a_local_base_models_card_is_read(tmp_path):
    (tmp_path / "README.md").write_text("---\nlicense: mit\n---\n")
    assert base_model_license(str(tmp_path)) == License("mit")
    (tmp_path / "README.md").unlink()
    assert base_model_license(str(tmp_path)) is None


def test_a_hub_models_card_is_read_from_the_cache_first(tmp_path, monkeypatch):
    import huggingface_hub

    cached = tmp_path / "README.md"
    cached.write_text("---\nlicense: llama3.2\n---\n")
    asked = []
    monkeypatch.setattr(
        huggingface_hub,
        "try_to_load_from_cache",
        lambda repo, name, revision=None: asked.append((repo, name, revision)) or str(cached),
    )
    monkeypatch.setattr(base_license, "hub_problem", lambda: pytest.fail("the hub was asked"))
    assert base_model_license("meta-llama/Llama-3.2-1B-Instruct", "abc123") == License("llama3.2")
    assert asked == [("meta-llama/Llama-3.2-1B-Instruct", "README.md", "abc123")]


def test_a_hub_models_card_metadata_is_asked_when_not_cached(monkeypatch):
    """Not cached and the hub answers: the card's metadata from the hub's model info (public for gated models)."""
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    monkeypatch.setattr(base_license, "hub_problem", lambda: None)
    calls = []

    class Api:
        def model_info(self, repo, revision=None, timeout=None):
            calls.append((repo, revision, timeout))
            card = {"license": "apache-2.0", "tags": ["chat"]}
            return SimpleNamespace(card_data=SimpleNamespace(to_dict=lambda: card))

    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    assert base_model_license("Qwen/Qwen2.5-0.5B-Instruct") == License("apache-2.0")
    assert calls == [("Qwen/Qwen2.5-0.5B-Instruct", None, base_license.HUB_TIMEOUT_S)]


def test_a_hub_model_is_not_asked_for_when_the_hub_cannot_be_used(monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    monkeypatch.setattr(base_license, "hub_problem", lambda: "HF_HUB_OFFLINE is set")
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda: pytest.fail("the hub was asked"))
    assert base_model_license("someorg/some-model") is None


def test_the_base_models_licence_wins_over_the_config_and_a_difference_is_warned(caplog):
    with caplog.at_level("WARNING", logger="symnoise.train"):
        assert card_license("apache-2.0", License("llama3.2")) == License("llama3.2")
    [warning] = caplog.messages
    assert "model.license=apache-2.0" in warning and "llama3.2" in warning
    caplog.clear()
    with caplog.at_level("WARNING", logger="symnoise.train"):
        assert card_license("llama3.2", License("llama3.2")) == License("llama3.2")
        assert card_license(None, License("mit")) == License("mit")
        assert card_license("mit", None) == License("mit", source="model.license in the config")
        assert card_license(None, None) is None
    assert caplog.messages == []


# ------------------------------------------------------------------------------------------ symnoise train
def symnoise(args, cwd):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return run_symnoise(args, cwd, env)


def train_copied_starter(work, base, alpaca_file, *overrides):
    """`symnoise configs copy STARTER my.yaml`, then `symnoise train my.yaml model.name=BASE ...` (2 tiny steps)."""
    assert symnoise(["configs", "copy", STARTER, "my.yaml"], work).returncode == 0
    proc = symnoise(
        [
            "train",
            "my.yaml",
            f"model.name={base}",
            f"data.path={alpaca_file}",
            "data.template=alpaca",
            "data.max_length=96",
            "training.output_dir=runs/mine",
            "training.max_steps=2",
            "training.per_device_batch_size=4",
            "training.effective_batch_size=8",
            "training.device=cpu",
            "training.report_to=[]",
            "training.gradient_checkpointing=false",
            "lora.target_modules=[q_proj,v_proj]",
            *overrides,
        ],
        work,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return (work / "runs/mine/README.md").read_text(), proc.stderr


def test_a_copied_starter_with_another_model_does_not_state_the_starters_licence(
    tmp_path, base_model, alpaca_file
):
    card, _ = train_copied_starter(tmp_path, base_model, alpaca_file)
    assert "license" not in card_header(card)
    assert "apache-2.0" not in card
    assert licence_row(card) == f"{LICENCE_ROW} {UNKNOWN_LICENSE} |"


def test_the_card_carries_the_base_models_licence_over_a_kept_config_licence(
    tmp_path, base_model, alpaca_file
):
    """A copy made before the starters stopped pinning a licence still says apache-2.0: the base model's card
    (mit here) wins, with a warning; a fine-tune of the result reads the same licence from its card."""
    import shutil

    base = tmp_path / "base"
    shutil.copytree(base_model, base)
    (base / "README.md").write_text("---\nlicense: mit\n---\n# A tiny model\n")
    work = tmp_path / "work"
    work.mkdir()
    card, stderr = train_copied_starter(work, base, alpaca_file, "model.license=apache-2.0")
    assert card_header(card)["license"] == "mit"
    assert licence_row(card) == f"{LICENCE_ROW} mit |"
    assert "model.license=apache-2.0 in the config differs from the licence mit" in stderr
    assert base_model_license(str(work / "runs/mine")) == License("mit")
