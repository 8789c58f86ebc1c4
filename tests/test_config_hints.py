"""A mistyped config key names the nearest valid one, at every level; method names ignore case."""

from __future__ import annotations

import subprocess
import sys

import pytest

from symnoise import NoiseConfig
from symnoise.train.config import ConfigError, validate_config

BASE = {"model": {"name": "m"}, "data": {"path": "d.jsonl"}, "training": {"output_dir": "out"}}


@pytest.mark.parametrize(
    ("section", "key", "hint"),
    [
        (None, "trainig", "trainig: unknown field; did you mean training?"),
        ("training", "learning_rat", "training.learning_rat: unknown field; did you mean learning_rate?"),
        ("model", "nmae", "model.nmae: unknown field; did you mean name?"),
        ("noise", "alpah", "unknown NoiseConfig field(s) alpah (did you mean alpha?)"),
        ("lora", "dropuot", "lora.dropuot: unknown field; did you mean dropout?"),
    ],
)
def test_unknown_keys_name_the_nearest_valid_one(section, key, hint):
    data = {name: dict(value) for name, value in BASE.items()}
    (data.setdefault(section, {}) if section else data)[key] = 1
    with pytest.raises(ConfigError) as error:
        validate_config(data)
    assert hint in str(error.value)


def test_a_key_like_no_field_lists_what_is_allowed():
    with pytest.raises(ConfigError, match=r"model.zzzzzz: unknown field; allowed: name, revision, dtype"):
        validate_config({**BASE, "model": {"name": "m", "zzzzzz": 1}})


@pytest.mark.parametrize(
    ("given", "method"), [("NEFTune", "uniform"), ("SymNoise", "symnoise"), ("GAUSSIAN", "gaussian")]
)
def test_method_names_ignore_case(given, method):
    assert NoiseConfig(given).method == method
    assert validate_config({**BASE, "noise": {"method": given}}).noise.method == method


def test_the_command_prints_the_hint(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "symnoise", "train", "qwen2.5-0.5b/alpaca-symnoise-lora", "noise.alpah=3"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2 and "did you mean alpha?" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "attention",
    [
        "eager",
        "sdpa",
        "flex_attention",
        "flash_attention_2",
        "flash_attention_3",
        "flash_attention_4",
        "kernels-community/flash-attn2",
        "kernels-community/vllm-flash-attn3",
        "kernels-community/flash-attn3@v2",
        "my-org/my-attention:flash_attn_varlen_func",
    ],
)
def test_attention_by_name_or_as_a_hub_kernel(attention):
    """transformers' attention names, and hub kernels as transformers names them (ORG/REPO[@REVISION][:FUNCTION])."""
    config = validate_config({**BASE, "model": {"name": "m", "attn_implementation": attention}})
    assert config.model.attn_implementation == attention


@pytest.mark.parametrize(
    "attention",
    [
        "flash",
        "flash_attention",
        "flex",
        "paged|sdpa",
        "kernels-community/flash attn2",
        "a/b/c",
        "org/",
        "o/r:f:g",
    ],
)
def test_an_unknown_attention_lists_what_is_allowed(attention):
    with pytest.raises(ConfigError) as error:
        validate_config({**BASE, "model": {"name": "m", "attn_implementation": attention}}, source="c.yaml")
    assert str(error.value) == (
        f"c.yaml: invalid config\n  model.attn_implementation: unknown attention {attention!r}; use one of eager, "
        "sdpa, flex_attention, flash_attention_2, flash_attention_3, flash_attention_4, or a hub kernel ORG/REPO[@REVISION][:FUNCTION] "
        "(e.g. kernels-community/flash-attn2)"
    )
