"""symnoise: instruction fine-tuning with noisy embeddings (NEFTune, Gaussian, Bernoulli, SymNoise).

Public API::

    import symnoise
    config = symnoise.NoiseConfig("symnoise", alpha=5)
    with symnoise.attach(model, config) as handle:
        ...  # any training loop that calls model(input_ids=..., attention_mask=..., labels=...)

For transformers' ``Trainer`` and TRL's ``SFTTrainer``, ``DPOTrainer``, ``KTOTrainer`` and ``ORPOTrainer`` see
``symnoise.hf.add_noise``.
"""

from .attach import NoiseHandle, attach, get_handle, noise_off, unwrap_model
from .config import NoiseConfig

__all__ = ["NoiseConfig", "NoiseHandle", "attach", "get_handle", "noise_off", "unwrap_model"]
__version__ = "0.1.0"


def __getattr__(name: str):
    """``symnoise.hf`` is imported on first use: it pulls in transformers' Trainer."""
    if name == "hf":
        import importlib

        return importlib.import_module(".hf", __name__)
    raise AttributeError(f"module 'symnoise' has no attribute {name!r}")
