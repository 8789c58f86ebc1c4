"""``symnoise winrate``: AlpacaEval win rates of one or more annotation files, as a table or JSON; with
``--length-controlled``, also AlpacaEval 2's length-controlled win rate (the alpaca_eval package's GLM)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from symnoise.evaluation.length_control import LengthControlError, length_controlled_win_rate
from symnoise.evaluation.winrate import AnnotationError, format_table, win_rates


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "files", nargs="+", metavar="FILE", help="AlpacaEval-format annotation files (JSON lists)"
    )
    parser.add_argument("--by", choices=["dataset"], default=None, help="split each generator by subset")
    parser.add_argument("--json", action="store_true", help="print a JSON list of rows instead of a table")
    parser.add_argument(
        "--length-controlled",
        action="store_true",
        help="add the length-controlled win rate (alpaca_eval's GLM; one model per file, rows in "
        "AlpacaEval's instruction order)",
    )
    parser.add_argument(
        "--lc-data",
        type=Path,
        help="local copy of df_gamed.csv from the hub dataset "
        "tatsu-lab/alpaca_eval, which the length control needs (default: downloaded)",
    )


def run(args: argparse.Namespace) -> int:
    if args.length_controlled and args.by:
        print(
            "symnoise winrate: error: --length-controlled is per model, not per subset (--by)",
            file=sys.stderr,
        )
        return 1
    try:
        rows = win_rates(args.files, by_dataset=args.by == "dataset")
        if args.length_controlled:
            rows = [
                dataclasses.replace(row, **length_controlled_win_rate(row.file, args.lc_data)) for row in rows
            ]
    except (AnnotationError, LengthControlError) as error:
        print(f"symnoise winrate: error: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([row.to_dict() for row in rows], indent=2))
    else:
        print(format_table(rows))
    return 0
