"""``symnoise configs list`` / ``symnoise configs copy NAME DEST``: the configs shipped with the package.

Examples::

    symnoise configs list
    symnoise configs copy qwen2.5-0.5b/alpaca-symnoise-lora my-run.yaml
    symnoise train my-run.yaml data.path=my_data.jsonl
"""

from __future__ import annotations

import argparse
import sys

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


def run(args: argparse.Namespace) -> int:
    from ..shipped_configs import copy_config, list_configs

    if args.action == "list":
        configs = [c for c in list_configs() if args.kind in (None, c.kind)]
        width = max(len(c.name) for c in configs)
        kind = None
        for config in configs:
            if config.kind != kind:
                kind = config.kind
                print(("\n" if config is not configs[0] else "") + HEADERS[kind])
            print(f"  {config.name:<{width}}  {config.description}")
            if args.paths or config.kind == "accelerate":
                print(f"  {'':<{width}}  {config.path}")
        return 0
    try:
        target = copy_config(args.name, args.destination, overwrite=args.force)
    except (KeyError, FileExistsError) as error:
        print(f"symnoise configs: error: {error.args[0]}", file=sys.stderr)
        return 2
    print(f"wrote {target}")
    return 0
