"""Every place that loads a model does so with transformers' hub kernels off unless the config opts in.

transformers 5.2x turns ``use_kernels`` on by default in ``from_pretrained``: with the `kernels` package missing (as
on a fresh GPU image) every load then raises "Kernels are not available", and with it installed, layers are
swapped for kernels fetched from the hub. The tests hide the package from transformers and load through each path.
"""

from __future__ import annotations

import pytest
import transformers.modeling_utils
from test_export import lora_run  # noqa: F401  (fixture)
from test_train import tiny_config

from symnoise.analysis.inputs import load_model as load_analysis_model
from symnoise.analysis.inputs import resolve_target
from symnoise.export import merge_lora
from symnoise.generation import load_model_and_tokenizer
from symnoise.train import train
from symnoise.train.config import ConfigError

# Slow (`make test` only), and part of the floor subset run against the lowest declared versions
# (tools/test_floors.sh).
pytestmark = [pytest.mark.slow, pytest.mark.floor]


@pytest.fixture
def kernels_missing(monkeypatch):
    monkeypatch.setattr(transformers.modeling_utils, "is_kernels_available", lambda: False)
    with pytest.raises(
        ValueError, match="Kernels are not available"
    ):  # what the default does without the fix
        transformers.modeling_utils.PreTrainedModel.set_use_kernels(
            object.__new__(transformers.PreTrainedModel), True
        )


def test_training_generation_and_export_load_without_the_kernels_package(
    kernels_missing,
    base_model,
    alpaca_file,
    lora_run,  # noqa: F811
    tmp_path,
):
    result = train(tiny_config(base_model, alpaca_file, tmp_path / "run", training__max_steps=1))
    assert result.steps == 1
    model, _ = load_model_and_tokenizer(tmp_path / "run", device="cpu")
    assert not model.use_kernels
    merged = merge_lora(lora_run, tmp_path / "merged")
    assert (merged / "model.safetensors").is_file()
    for run in (tmp_path / "run", lora_run):  # `symnoise analyze`: a full run, and a LoRA run's adapter
        target = resolve_target(run)
        model, _ = load_analysis_model(target, "cpu", "float32")
        assert target.is_lora == (run == lora_run)
        assert not (model.get_base_model() if target.is_lora else model).use_kernels


def test_opting_in_without_the_package_is_a_config_error(monkeypatch, base_model, alpaca_file, tmp_path):
    monkeypatch.setattr("symnoise.train.preflight._importable", lambda module: module != "kernels")
    with pytest.raises(ConfigError, match=r"model.use_kernels: true needs the kernels package"):
        train(tiny_config(base_model, alpaca_file, tmp_path / "run", model__use_kernels=True))
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_a_hub_kernel_attention_is_handed_to_from_pretrained(monkeypatch, base_model, alpaca_file, tmp_path):
    """A kernel name in model.attn_implementation reaches transformers as given (which fetches it; not possible
    here: no network), with the layer kernels (use_kernels) still off."""
    import transformers

    from symnoise.train import recipe

    seen = {}

    def from_pretrained(name, **kwargs):
        seen.update(kwargs, name=name)
        raise RuntimeError("stop after reading the arguments")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", from_pretrained)
    kernel = "kernels-community/vllm-flash-attn3"
    config = tiny_config(base_model, alpaca_file, tmp_path / "run", model__attn_implementation=kernel)
    with pytest.raises(RuntimeError, match="stop after"):
        recipe.load_model(config, "fp32")
    assert (seen["name"], seen["attn_implementation"], seen["use_kernels"]) == (
        str(base_model),
        kernel,
        False,
    )


def test_a_hub_kernel_attention_without_the_package_is_a_config_error(
    monkeypatch, base_model, alpaca_file, tmp_path
):
    monkeypatch.setattr("symnoise.train.preflight._importable", lambda module: module != "kernels")
    config = tiny_config(
        base_model, alpaca_file, tmp_path / "run", model__attn_implementation="kernels-community/flash-attn2"
    )
    with pytest.raises(ConfigError) as error:
        train(config)
    assert str(error.value) == (
        "model.attn_implementation=kernels-community/flash-attn2 is a hub kernel: it needs the kernels package "
        "(pip install kernels), which is not installed; install it or use sdpa (the default)"
    )
    assert not (tmp_path / "run").exists()


def model_loads_without_use_kernels(root) -> list[str]:
    """``file:line`` of every ``X.from_pretrained(...)`` of a model class that does not pass ``use_kernels``
    (tokenizers, configs and generation configs load no layers and are left out)."""
    import ast
    from pathlib import Path

    not_models = ("Tokenizer", "Config", "GenerationConfig", "Processor")
    found = []
    for path in sorted(Path(root).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            if node.func.attr != "from_pretrained":
                continue
            owner = ast.unparse(node.func.value)
            if owner.endswith(not_models) or "use_kernels" in {k.arg for k in node.keywords}:
                continue
            found.append(f"{path.relative_to(Path(root).parent)}:{node.lineno} {owner}.from_pretrained")
    return found


@pytest.mark.parametrize("folder", ["src", "benchmarks"])
def test_every_model_load_in_the_code_says_use_kernels(folder):
    """A static guard for the paths no test loads with the package hidden (the benchmarks' checks among them)."""
    from conftest import REPO_ROOT

    assert model_loads_without_use_kernels(REPO_ROOT / folder) == []
