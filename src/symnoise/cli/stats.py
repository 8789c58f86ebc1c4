"""``symnoise stats``: length, 2-gram repetition and log-diversity of AlpacaEval-format outputs files."""

from __future__ import annotations

import argparse
import json
import sys

from symnoise.evaluation.stats import WORDS_PER_DATASET, OutputsError, file_stats, format_table, words_for


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "files", nargs="+", metavar="FILE", help="outputs files (JSON lists with an 'output' field)"
    )
    parser.add_argument(
        "--dataset",
        choices=list(WORDS_PER_DATASET),
        default="alpaca",
        help="training set the papers' N is taken from: "
        + ", ".join(f"{k} {v}" for k, v in WORDS_PER_DATASET.items())
        + " (default alpaca)",
    )
    parser.add_argument(
        "--words",
        type=int,
        default=None,
        metavar="N",
        help="truncate to the first N whitespace words (overrides --dataset)",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list of rows instead of a table")


def run(args: argparse.Namespace) -> int:
    try:
        rows = file_stats(args.files, words_for(args.dataset, args.words))
    except (OutputsError, ValueError) as error:
        print(f"symnoise stats: error: {error}", file=sys.stderr)
        return 1
    for row in rows:
        if row.n_kept == 0:
            print(
                f"symnoise stats: {row.file}: no response has at least {row.words} words, so 2-gram repetition "
                "and log-diversity are not computed (try a smaller --words)",
                file=sys.stderr,
            )
    print(json.dumps([row.to_dict() for row in rows], indent=2) if args.json else format_table(rows))
    return 0
