"""Options that several commands declare, written once so their names and help read the same everywhere."""

from __future__ import annotations

import argparse


def add_flags(parser: argparse.ArgumentParser, flags: dict[str, str]) -> None:
    """On/off options (``store_true``), in the given order: option name -> help text."""
    for name, help_text in flags.items():
        parser.add_argument(name, action="store_true", help=help_text)


def add_trust_remote_code(parser: argparse.ArgumentParser) -> None:
    """``--trust-remote-code``, for commands that load a model from the hub."""
    add_flags(parser, {"--trust-remote-code": "run model code from the hub repository"})
