"""The configs shipped inside the package: every one validates, `symnoise configs list/copy` work, and a clone's
`configs/` is the same folder as the package's."""

import subprocess
import sys

import pytest
import yaml
from conftest import REPO_ROOT

from symnoise.shipped_configs import CONFIGS_ROOT, copy_config, find_config, list_configs, resolve_config_path
from symnoise.train import load_config

STARTERS = {  # name -> (hub model, LoRA, 4-bit)
    "qwen2.5-0.5b/alpaca-symnoise": ("Qwen/Qwen2.5-0.5B-Instruct", False, False),
    "qwen2.5-0.5b/alpaca-symnoise-lora": ("Qwen/Qwen2.5-0.5B-Instruct", True, False),
    "llama3.2-1b/alpaca-symnoise": ("meta-llama/Llama-3.2-1B-Instruct", False, False),
    "llama3.2-1b/alpaca-symnoise-lora": ("meta-llama/Llama-3.2-1B-Instruct", True, False),
    "llama3.1-8b/alpaca-symnoise-qlora": ("meta-llama/Llama-3.1-8B-Instruct", True, True),
}


def test_the_clone_configs_folder_is_the_package_folder():
    assert (REPO_ROOT / "configs").is_symlink()
    assert (
        (REPO_ROOT / "configs").resolve()
        == CONFIGS_ROOT.resolve()
        == (REPO_ROOT / "src/symnoise/configs").resolve()
    )


def test_list_covers_every_file_with_its_kind():
    configs = list_configs()
    assert {c.path for c in configs} == set(CONFIGS_ROOT.rglob("*.yaml"))
    kinds = {c.name: c.kind for c in configs}
    assert kinds["grid/mini"] == "grid" and kinds["accelerate/fsdp"] == "accelerate"
    assert kinds["llama2-7b/alpaca-symnoise"] == "train" and set(STARTERS) <= set(kinds)
    assert all(c.description for c in configs)
    train_names = [c.name for c in configs if c.kind == "train"]
    assert train_names.index("qwen2.5-0.5b/alpaca-symnoise") < train_names.index("llama2-7b/alpaca-none")


@pytest.mark.parametrize("name", sorted(STARTERS))
def test_starter_configs_validate(name):
    model, lora, four_bit = STARTERS[name]
    config = load_config(find_config(name).path)
    # No licence pinned: the model card takes the base model's from its card, so a copy pointed at another
    # model does not state the starter model's licence.
    assert (config.model.name, config.model.license) == (model, None)
    assert (config.lora.enabled, config.lora.quantize_4bit) == (lora, four_bit)
    assert config.noise.method == "symnoise" and config.noise.alpha == 5.0
    assert config.data.template == "chat"  # instruct models: their own chat template
    assert config.training.output_dir == f"runs/{name}"
    assert config.training.learning_rate == (2e-4 if lora else 1e-5)


def test_every_train_config_validates_by_name():
    for config in list_configs():
        if config.kind == "train":
            assert load_config(resolve_config_path(config.name)).training.output_dir


def test_find_and_resolve(tmp_path, monkeypatch):
    assert find_config("configs/grid/mini.yaml").name == "grid/mini"
    with pytest.raises(KeyError, match="did you mean qwen2.5-0.5b/alpaca-symnoise"):
        find_config("qwen2.5-0.5b/alpaca-symnose")
    monkeypatch.chdir(tmp_path)
    assert (
        resolve_config_path("qwen2.5-0.5b/alpaca-symnoise")
        == find_config("qwen2.5-0.5b/alpaca-symnoise").path
    )
    local = tmp_path / "qwen2.5-0.5b" / "alpaca-symnoise"
    local.parent.mkdir()
    local.write_text("model: {name: mine}\n")
    assert resolve_config_path("qwen2.5-0.5b/alpaca-symnoise") == local.relative_to(tmp_path)  # a file wins


def test_copy_refuses_to_overwrite(tmp_path):
    target = copy_config("qwen2.5-0.5b/alpaca-symnoise-lora", tmp_path)
    assert target == tmp_path / "alpaca-symnoise-lora.yaml"
    assert target.read_bytes() == find_config("qwen2.5-0.5b/alpaca-symnoise-lora").path.read_bytes()
    with pytest.raises(FileExistsError, match="already exists"):
        copy_config("grid/mini", target)
    copy_config("grid/mini", target, overwrite=True)
    assert yaml.safe_load(target.read_text())["name"] == "mini"


@pytest.mark.slow
def test_cli_list_copy_and_train_check_by_name(tmp_path, base_model, alpaca_file):
    def symnoise(*args):
        return subprocess.run(
            [sys.executable, "-m", "symnoise", *args],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )

    listed = symnoise("configs", "list")
    assert listed.returncode == 0, listed.stderr
    assert "qwen2.5-0.5b/alpaca-symnoise-lora" in listed.stdout and "grid/mini" in listed.stdout
    assert str(CONFIGS_ROOT / "accelerate" / "fsdp.yaml") in listed.stdout  # accelerate needs the file path
    only_grid = symnoise("configs", "list", "--kind", "grid")
    assert "grid/mini" in only_grid.stdout and "qwen" not in only_grid.stdout
    copied = symnoise("configs", "copy", "qwen2.5-0.5b/alpaca-symnoise", "mine.yaml")
    assert copied.returncode == 0 and (tmp_path / "mine.yaml").is_file()
    again = symnoise("configs", "copy", "qwen2.5-0.5b/alpaca-symnoise", "mine.yaml")
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr
    missing = symnoise("configs", "copy", "no/such", "x.yaml")
    assert missing.returncode == 2 and "symnoise configs list" in missing.stderr
    # Offline (the tests' HF_HUB_OFFLINE=1), the shipped hub names are refused clearly; with a local model and
    # data in their place, the check reads both and passes.
    offline = symnoise("train", "llama3.2-1b/alpaca-symnoise-lora", "--check")
    assert offline.returncode == 2 and "Traceback" not in offline.stderr
    assert "meta-llama/Llama-3.2-1B-Instruct" in offline.stderr and "HF_HUB_OFFLINE" in offline.stderr
    local = [f"model.name={base_model}", f"data.path={alpaca_file}", "data.template=alpaca"]
    checked = symnoise("train", "llama3.2-1b/alpaca-symnoise-lora", *local, "training.max_steps=5", "--check")
    assert checked.returncode == 0 and "config valid" in checked.stdout, checked.stderr
    assert "data valid" in checked.stdout
    checked = symnoise("train", "mine.yaml", *local, "--check")
    assert checked.returncode == 0 and "data valid" in checked.stdout, checked.stderr


def test_top_level_help_is_for_users():
    proc = subprocess.run(
        [sys.executable, "-m", "symnoise", "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0
    assert "dispatcher" not in proc.stdout and "entry module" not in proc.stdout
    for command in ("configs list", "configs copy", "symnoise train", "symnoise export", "--merge-lora"):
        assert command in proc.stdout


def test_a_copied_paper_grid_finds_its_base_config_outside_the_checkout(tmp_path, monkeypatch):
    from symnoise.grid.spec import validate_grid

    monkeypatch.chdir(tmp_path)
    copy_config("grid/paper-table1", tmp_path)
    data = yaml.safe_load((tmp_path / "paper-table1.yaml").read_text())
    assert data["base"] == "configs/llama2-7b/alpaca-none.yaml" and not (tmp_path / "configs").exists()
    data["evaluation"]["fallback"] = "synthetic"  # the paper grid names data files the user provides
    grid = validate_grid(data, "paper-table1.yaml")
    assert grid.cells and {c.config.model.name for c in grid.cells} == {"meta-llama/Llama-2-7b-hf"}


def test_listing_gives_whole_sentences_and_no_expected_files_as_grids():
    listing = subprocess.run(
        [sys.executable, "-m", "symnoise", "configs", "list"], capture_output=True, text=True, check=True
    ).stdout
    entries = [line for line in listing.splitlines() if line.startswith("  ") and not line.startswith("   ")]
    names = [line.split()[0] for line in entries]
    assert "grid/paper-table1" in names and not [n for n in names if n.endswith(".expected")]
    assert "The paper's numbers: grid/paper-table1.expected." in " ".join(listing.split())
    for config in list_configs():  # the leading comment's first sentence, or all of it: never cut mid-way
        block = " ".join(
            line.lstrip("#").strip()
            for line in config.path.read_text().split("\n\n")[0].splitlines()
            if line.startswith("#")
        )
        assert block.startswith(config.description) and config.description, config.name
        assert config.description == block or config.description.endswith((".", "!", "?")), config.name


STARTER_FILES = [c for c in list_configs() if c.kind == "train" and not c.name.startswith("llama2-7b/")]


@pytest.mark.parametrize("name", [c.name for c in STARTER_FILES])
def test_starters_detect_the_data_format(name):
    """A starter is a template for the user's own data: its format is detected from the rows (the papers'
    llama2-7b configs and grids keep the format of their fixed hub dataset)."""
    assert load_config(find_config(name).path).data.format == "auto"


def test_a_starter_reads_sharegpt_and_messages_files(tmp_path, base_model, capsys):
    """Before: `format: alpaca` in the starter refused these files with '4 missing instruction'."""
    import json

    from symnoise.cli.main import main

    conversation = [{"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "hi"}]
    messages = [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "hi"}]
    files = {"sharegpt": [{"conversations": conversation}] * 4, "messages": [{"messages": messages}] * 4}
    for detected, rows in files.items():
        path = tmp_path / f"{detected}.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        words = [f"model.name={base_model}", f"data.path={path}", "data.template=vicuna", "--check"]
        assert main(["train", "qwen2.5-0.5b/alpaca-symnoise", *words]) == 0, capsys.readouterr().err
        assert f"(format {detected})" in capsys.readouterr().out
