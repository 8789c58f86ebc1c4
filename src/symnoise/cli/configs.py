"""``symnoise configs list`` / ``symnoise configs copy NAME DEST``: the configs shipped with the package.

Examples::

    symnoise configs list
    symnoise configs copy qwen2.5-0.5b/alpaca-symnoise-lora my-run.yaml
    symnoise train my-run.yaml data.path=my_data.jsonl
"""

from __future__ import annotations

import argparse
import shutil
import sys
import textwrap

from .options import add_flags

HEADERS = {
    "train": "train configs (symnoise train NAME [section.field=value ...], or copy one and edit it):",
    "grid": "grid configs (copy one, then symnoise grid FILE):",
    "accelerate": "accelerate configs (accelerate launch --config_file PATH -m symnoise train CONFIG):",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = __doc__.split("Examples::", 1)[1]
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = sub.add_parser("list", help="show every shipped config with its kind and description")
    listing.add_argument("--kind", choices=("train", "grid", "accelerate"), help="only configs of this kind")
    add_flags(listing, {"--paths": "also print where each file is installed"})
    copy = sub.add_parser("copy", help="copy a shipped config to a file or folder to edit it")
    copy.add_argument("name", help="a name from `symnoise configs list`, e.g. qwen2.5-0.5b/alpaca-symnoise")
    copy.add_argument("destination", help="file to write, or an existing folder (keeps the file name)")
    add_flags(copy, {"--force": "replace the destination if it exists"})


def print_listing(configs: list, kind: str | None, paths: bool) -> None:
    """One entry per config, grouped by kind, descriptions wrapped (never cut) to the terminal's width; a grid
    that ships the paper's numbers says so on its entry instead of listing them as a grid of their own."""
    from ..shipped_configs import EXPECTED_SUFFIX

    expected = {c.name.removesuffix(EXPECTED_SUFFIX) for c in configs if c.kind == "expected"}
    shown = [c for c in configs if c.kind != "expected" and kind in (None, c.kind)]
    width = max(len(c.name) for c in shown)
    columns = max(shutil.get_terminal_size((110, 24)).columns, width + 40)
    current = None
    for config in shown:
        if config.kind != current:
            current = config.kind
            print(("\n" if config is not shown[0] else "") + HEADERS[current])
        text = config.description
        if config.name in expected:
            text += f" The paper's numbers: {config.name}{EXPECTED_SUFFIX}."
        lines = textwrap.wrap(text, columns - width - 4) or [""]
        print(f"  {config.name:<{width}}  {lines[0]}")
        for line in lines[1:] + ([str(config.path)] if paths or config.kind == "accelerate" else []):
            print(f"  {'':<{width}}  {line}")


def run(args: argparse.Namespace) -> int:
    from ..shipped_configs import copy_config, list_configs

    if args.action == "list":
        print_listing(list_configs(), args.kind, args.paths)
        return 0
    try:
        target = copy_config(args.name, args.destination, overwrite=args.force)
    except (KeyError, FileExistsError) as error:
        print(f"symnoise configs: error: {error.args[0]}", file=sys.stderr)
        return 2
    print(f"wrote {target}")
    return 0
