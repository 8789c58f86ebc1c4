"""``symnoise winrate``: AlpacaEval win rates of one or more annotation files, as a table or JSON."""

from __future__ import annotations

import argparse
import json
import sys

from symnoise.evaluation.winrate import AnnotationError, format_table, win_rates


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="AlpacaEval-format annotation files (JSON lists)")
    parser.add_argument("--by", choices=["dataset"], default=None, help="split each generator by subset")
    parser.add_argument("--json", action="store_true", help="print a JSON list of rows instead of a table")


def run(args: argparse.Namespace) -> int:
    try:
        rows = win_rates(args.files, by_dataset=args.by == "dataset")
    except AnnotationError as error:
        print(f"symnoise winrate: error: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([row.to_dict() for row in rows], indent=2))
    else:
        print(format_table(rows))
    return 0
