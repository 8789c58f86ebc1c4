"""Fine-tuning recipe: typed config (`TrainConfig`, `load_config`) and `train(config)`."""

from .config import ConfigError, TrainConfig, load_config
from .recipe import TrainResult, train

__all__ = ["ConfigError", "TrainConfig", "TrainResult", "load_config", "train"]
