"""``symnoise winrate``: AlpacaEval win rates of one or more annotation files, as a table or JSON; with
``--length-controlled``, also AlpacaEval 2's length-controlled win rate (the alpaca_eval package's GLM)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from symnoise.evaluation.length_control import LengthControlError, length_controlled_win_rate
from symnoise.evaluation.winrate import AnnotationError, format_table, win_rates

from .options import add_length_control, fail


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="AlpacaEval-format annotation files (JSON lists); the metrics.json that `symnoise judge` writes "
        "beside its annotations is skipped",
    )
    parser.add_argument("--by", choices=["dataset"], default=None, help="split each generator by subset")
    parser.add_argument("--json", action="store_true", help="print a JSON list of rows instead of a table")
    add_length_control(
        parser,
        "add the length-controlled win rate (alpaca_eval's GLM; one model per file, rows in AlpacaEval's "
        "instruction order)",
    )


def _say_skipped(why: str) -> None:
    print(f"symnoise winrate: skipping {why}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    length_controlled = args.length_controlled or args.lc_data is not None
    if length_controlled and args.by:
        return fail("winrate", "--length-controlled is per model, not per subset (--by)", 1)
    try:
        rows = win_rates(args.files, by_dataset=args.by == "dataset", skip_judge_metrics=_say_skipped)
        if length_controlled:
            rows = [
                dataclasses.replace(row, **length_controlled_win_rate(row.file, args.lc_data)) for row in rows
            ]
    except (AnnotationError, LengthControlError) as error:
        return fail("winrate", error, 1)
    if args.json:
        print(json.dumps([row.to_dict() for row in rows], indent=2))
    else:
        print(format_table(rows))
    return 0
