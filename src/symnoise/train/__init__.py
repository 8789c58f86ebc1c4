"""Fine-tuning recipe: typed config (`TrainConfig`, `load_config`) and `train(config)`.

The package is also callable, so ``symnoise.train(config)`` runs a job (see `symnoise.api.train`): the name
``symnoise.train`` is this package once it is imported, and a module cannot be replaced by a function of the
same name without breaking ``from symnoise.train import ...``.
"""

import sys
import types

from .config import ConfigError, TrainConfig, load_config
from .recipe import TrainResult, train

__all__ = ["ConfigError", "TrainConfig", "TrainResult", "load_config", "train"]


class _CallableModule(types.ModuleType):
    def __call__(self, config, overrides=(), resume: bool = False) -> TrainResult:
        """``symnoise.train(config, overrides=(), resume=False)``: as ``symnoise train``."""
        from ..api import train as train_api

        return train_api(config, overrides, resume)


sys.modules[__name__].__class__ = _CallableModule
