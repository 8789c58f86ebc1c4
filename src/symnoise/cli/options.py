"""Options that several commands declare, written once so their names and help read the same everywhere."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_flags(parser: argparse.ArgumentParser, flags: dict[str, str]) -> None:
    """On/off options (``store_true``), in the given order: option name -> help text."""
    for name, help_text in flags.items():
        parser.add_argument(name, action="store_true", help=help_text)


def add_trust_remote_code(parser: argparse.ArgumentParser) -> None:
    """``--trust-remote-code``, for commands that load a model from the hub."""
    add_flags(parser, {"--trust-remote-code": "run model code from the hub repository"})


def add_word_limit(parser: argparse.ArgumentParser, words_per_dataset: dict[str, int], what: str) -> None:
    """``--dataset`` / ``--words``: the papers' first-N-words cut for repetition and log-diversity (``what``)."""
    parser.add_argument(
        "--dataset",
        choices=list(words_per_dataset),
        default="alpaca",
        help=f"training set the papers' N ({what}) is taken from: "
        + ", ".join(f"{k} {v}" for k, v in words_per_dataset.items())
        + " (default alpaca)",
    )
    parser.add_argument(
        "--words",
        type=int,
        default=None,
        metavar="N",
        help=f"{what}: the first N words (overrides --dataset)",
    )


def add_length_control(parser: argparse.ArgumentParser, what: str) -> None:
    """``--length-controlled`` / ``--lc-data``: AlpacaEval's length-controlled win rate (``what`` it adds)."""
    parser.add_argument("--length-controlled", action="store_true", help=what)
    parser.add_argument(
        "--lc-data",
        type=Path,
        metavar="df_gamed.csv",
        help="local copy of df_gamed.csv from the hub dataset tatsu-lab/alpaca_eval, which the length control "
        "needs (implies --length-controlled; default: downloaded)",
    )


def fail(command: str, error: object, status: int) -> int:
    """Print ``symnoise COMMAND: error: ...`` to stderr and return the exit status."""
    print(f"symnoise {command}: error: {error}", file=sys.stderr)
    return status
