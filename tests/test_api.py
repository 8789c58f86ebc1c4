"""The Python API mirrors the CLI: `symnoise.load_config(path, overrides)` and `symnoise.train(config)`."""

import pytest

import symnoise
from symnoise.shipped_configs import find_config
from symnoise.train import ConfigError, TrainConfig


def test_load_config_takes_shipped_names_files_and_overrides(tmp_path):
    config = symnoise.load_config("qwen2.5-0.5b/alpaca-symnoise", ["noise.alpha=10", "training.max_steps=7"])
    assert isinstance(config, TrainConfig) and config.model.name == "Qwen/Qwen2.5-0.5B-Instruct"
    assert (config.noise.alpha, config.training.max_steps) == (10.0, 7)
    assert symnoise.load_config(
        find_config("grid/mini").path.parent.parent / "llama2-7b" / "alpaca-none.yaml"
    )
    with pytest.raises(ConfigError, match=r"training.lr: unknown field"):
        symnoise.load_config("qwen2.5-0.5b/alpaca-symnoise", ["training.lr=1"])


def test_train_is_callable_and_the_package_still_imports(alpaca_file, tmp_path, monkeypatch):
    import symnoise.train.recipe as recipe
    from symnoise.train import train as recipe_train

    assert callable(symnoise.train) and recipe_train is recipe.train
    received = []
    monkeypatch.setattr(
        recipe, "train", lambda config, resume=False: received.append((config, resume)) or "ok"
    )
    mapping = {"model": {"name": "m"}, "data": {"path": str(alpaca_file)}, "training": {"output_dir": "o"}}
    assert symnoise.train(mapping, ["noise.method=neftune"], resume=True) == "ok"
    config, resume = received[-1]
    assert config.noise.method == "uniform" and resume is True
    assert symnoise.train(config, ["training.max_steps=3"]) == "ok"
    assert received[-1][0].training.max_steps == 3 and received[-1][0].noise.method == "uniform"
    with pytest.raises(ConfigError, match="config mapping"):
        symnoise.train({"model": {}})
