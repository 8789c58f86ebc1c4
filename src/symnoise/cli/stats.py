"""``symnoise stats``: length, 2-gram repetition and log-diversity of AlpacaEval-format outputs files."""

from __future__ import annotations

import argparse
import json
import sys

from symnoise.evaluation.stats import WORDS_PER_DATASET, OutputsError, file_stats, format_table, words_for

from .options import add_word_limit, fail


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "files", nargs="+", metavar="FILE", help="outputs files (JSON lists with an 'output' field)"
    )
    add_word_limit(parser, WORDS_PER_DATASET, "for repetition and log-diversity")
    parser.add_argument("--json", action="store_true", help="print a JSON list of rows instead of a table")


def run(args: argparse.Namespace) -> int:
    try:
        rows = file_stats(args.files, words_for(args.dataset, args.words))
    except (OutputsError, ValueError) as error:
        return fail("stats", error, 1)
    for row in rows:
        if row.n_kept == 0:
            print(
                f"symnoise stats: {row.file}: no response has at least {row.words} words, so 2-gram repetition "
                "and log-diversity are not computed (try a smaller --words)",
                file=sys.stderr,
            )
    print(json.dumps([row.to_dict() for row in rows], indent=2) if args.json else format_table(rows))
    return 0
