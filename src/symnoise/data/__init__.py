"""The data layer of `symnoise train`: load instruction data, render prompts, tokenise with masked prompts."""

from .formats import (
    FORMATS,
    DataError,
    Example,
    LoadReport,
    default_template,
    format_of_keys,
    load_examples,
)
from .packing import PackedRowsCollator, pack_rows, real_token_count
from .templates import TEMPLATES, render_prompt
from .tokenize import IGNORE_INDEX, TokenizedDataset, tokenize_examples

__all__ = [
    "FORMATS",
    "IGNORE_INDEX",
    "TEMPLATES",
    "DataError",
    "Example",
    "LoadReport",
    "PackedRowsCollator",
    "TokenizedDataset",
    "default_template",
    "format_of_keys",
    "load_examples",
    "pack_rows",
    "real_token_count",
    "render_prompt",
    "tokenize_examples",
]
