"""symnoise: instruction fine-tuning with noisy embeddings (NEFTune, Gaussian, Bernoulli, SymNoise).

Public API::

    import symnoise
    config = symnoise.NoiseConfig("symnoise", alpha=5)
    with symnoise.attach(model, config) as handle:
        ...  # any training loop that calls model(input_ids=..., attention_mask=..., labels=...)

For transformers' ``Trainer`` and TRL's ``SFTTrainer``, ``DPOTrainer``, ``KTOTrainer`` and ``ORPOTrainer`` see
``symnoise.hf.add_noise``. The recipe of ``symnoise train``, from Python::

    config = symnoise.load_config("qwen2.5-0.5b/alpaca-symnoise-lora", ["data.path=my_data.jsonl"])
    result = symnoise.train(config)
"""

from .attach import NoiseHandle, attach, get_handle, noise_off, unwrap_model
from .config import NoiseConfig

__all__ = ["NoiseConfig", "NoiseHandle", "attach", "get_handle", "noise_off", "unwrap_model"]
__version__ = "0.1.0"


def __getattr__(name: str):
    """``symnoise.hf``, ``symnoise.train`` and ``symnoise.load_config`` are imported on first use: they pull in
    transformers' Trainer."""
    import importlib

    if name in ("hf", "train"):
        return importlib.import_module(f".{name}", __name__)
    if name == "load_config":
        return importlib.import_module(".api", __name__).load_config
    raise AttributeError(f"module 'symnoise' has no attribute {name!r}")
