"""The data layer of `symnoise train`: load instruction data, render prompts, tokenise with masked prompts."""

from .conversations import TURN_MODES, Conversation, Exchange
from .formats import (
    FORMATS,
    DataError,
    Example,
    LoadReport,
    default_template,
    format_of_keys,
    iter_records,
    load_examples,
    load_records,
)
from .mixture import MixedDataset, TrainingData, prepare_training_data
from .packing import PackedRowsCollator, pack_rows, real_token_count
from .prepare import DatasetReport, DatasetSpec, prepare_dataset
from .templates import TEMPLATES, render_prompt
from .tokenize import IGNORE_INDEX, TokenizedDataset, tokenize_examples

__all__ = [
    "FORMATS",
    "TURN_MODES",
    "Conversation",
    "DatasetReport",
    "DatasetSpec",
    "Exchange",
    "IGNORE_INDEX",
    "TEMPLATES",
    "DataError",
    "Example",
    "LoadReport",
    "MixedDataset",
    "PackedRowsCollator",
    "TokenizedDataset",
    "TrainingData",
    "default_template",
    "format_of_keys",
    "iter_records",
    "load_examples",
    "load_records",
    "pack_rows",
    "prepare_dataset",
    "prepare_training_data",
    "real_token_count",
    "render_prompt",
    "tokenize_examples",
]
