"""``symnoise compare A B``: the paired difference B - A between two judged runs (win rate, length-controlled win
rate when asked, length and repetition), with its standard error and 95% interval; see
:mod:`symnoise.evaluation.paired` for the pairing rules and formulas."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from symnoise.evaluation.length_control import LengthControlError
from symnoise.evaluation.paired import PairingError, compare
from symnoise.evaluation.runs import piece_names
from symnoise.evaluation.stats import WORDS_PER_DATASET, words_for

from .options import add_length_control, add_word_limit, fail

EPILOG = """\
Pairing: rows are matched by instruction (and dataset subset). Both files must hold the same prompts (none may
differ), one model each, judged against the same reference (equal output_1 and generator_1 on every prompt);
otherwise the command fails with exit status 2, naming both files. A prompt with a null preference in either
file is left out of both sides of the win rate (the count is printed).

Per prompt, d = B - A: the win-rate score (100 = model wins, 50 = draw, 0 = reference wins), the output's
characters and whitespace words (all paired prompts), its 2-gram repetition (%) and log-diversity on the first N
words (prompts where both outputs have N words). difference = mean(d); standard error = sd(d, ddof=1)/sqrt(n);
95% interval = difference +- t(0.975, n-1) * standard error (paired t-interval). --bootstrap R adds a paired
bootstrap percentile interval (R resamples of the prompts, numpy default_rng(--seed)).

Length-controlled (--length-controlled): AlpacaEval's GLM per file (alpaca_eval package, df_gamed.csv downloaded
or --lc-data); d = difference of the per-prompt predictions x 100; the interval is conditional on the fitted GLMs.

A line says so when a 95% interval contains 0 (the data does not show a difference). Exit status: 0 done,
2 input that cannot be paired or read, 1 the length-controlled win rate could not be computed.

A run directory stands for the first annotation file found in it:
  {annotations}.
--json keys: difference, standard_error, ci_low, ci_high, n (the win rate, percentage points), and win_rate,
length_chars, length_words, repetition_2gram, log_diversity, length_controlled (null unless computed) with the
same fields plus a and b (each side's mean over the same prompts).
"""

ROWS = (
    ("win_rate", "win rate (%)"),
    ("length_controlled", "LC win rate (%)"),
    ("length_chars", "length (chars)"),
    ("length_words", "length (words)"),
    ("repetition_2gram", "2-gram rep. (%)"),
    ("log_diversity", "log-diversity"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG.format(annotations=", ".join(piece_names()["annotations"]))
    parser.add_argument("a", metavar="A", help="annotation file or run directory (the baseline)")
    parser.add_argument("b", metavar="B", help="annotation file or run directory (reported as B - A)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    add_word_limit(parser, WORDS_PER_DATASET, "for repetition")
    parser.add_argument(
        "--bootstrap", type=int, default=0, metavar="R", help="add a paired bootstrap interval"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    add_length_control(parser, "add the length-controlled win rate's difference")


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_result(result: dict[str, Any]) -> str:
    """The plain-text report: one line per quantity, then the counts and the plain-language conclusions."""
    header = ["", "A", "B", "B - A", "std. err.", "95% interval", "n"]
    table = [header]
    for key, label in ROWS:
        row = result[key]
        if row is None:
            continue
        interval = "-" if row["ci_low"] is None else f"[{_fmt(row['ci_low'])}, {_fmt(row['ci_high'])}]"
        table.append([label, _fmt(row["a"]), _fmt(row["b"]), _fmt(row["difference"]),
                      _fmt(row["standard_error"]), interval, str(row["n"])])  # fmt: skip
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    lines = [
        f"A: {result['a']} ({result['generator_a']})",
        f"B: {result['b']} ({result['generator_b']})",
        f"reference: {result['reference']}, the same on all {result['n_prompts']} prompts; differences are B - A",
        "",
        *(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(line, widths, strict=True))
            )
            for line in table
        ),  # fmt: skip
        "",
    ]
    wins = result["win_rate"]
    lines.append(
        f"win rate: {wins['left_out']} prompts left out (null preference: {wins['null_a']} in A, {wins['null_b']} "
        f"in B); B scored above A on {wins['b_better']} prompts, below on {wins['a_better']}, "
        f"equal on {wins['n'] - wins['b_better'] - wins['a_better']}"
    )
    if "bootstrap" in wins:
        boot = wins["bootstrap"]
        lines.append(f"win rate, paired bootstrap ({boot['resamples']} resamples, seed {boot['seed']}): 95% interval "
                     f"[{_fmt(boot['ci_low'])}, {_fmt(boot['ci_high'])}]")  # fmt: skip
    lines.append(f"repetition and log-diversity: first {result['repetition_2gram']['words']} words, prompts where "
                 "both outputs are that long")  # fmt: skip
    if result["length_controlled"] is None:
        lines.append(f"length-controlled win rate: {result['length_controlled_note']}")
    lines.append(f"interval: {result['interval']}")
    for key, label in ROWS:
        row = result[key]
        if row is None:
            continue
        if row["ci_low"] is None:
            lines.append(f"{label}: the interval is undefined ({row['note']})")
        elif not (row["ci_low"] > 0 or row["ci_high"] < 0):
            lines.append(f"{label}: the data does not show a difference at 95% (the interval contains 0)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    try:
        words = words_for(args.dataset, args.words)
    except ValueError as error:
        print(f"symnoise compare: error: {error}", file=sys.stderr)
        return 2
    if args.bootstrap < 0:
        print("symnoise compare: error: --bootstrap must be 0 or more", file=sys.stderr)
        return 2
    try:
        result = compare(
            args.a,
            args.b,
            words=words,
            bootstrap=args.bootstrap,
            seed=args.seed,
            length_controlled=args.length_controlled or args.lc_data is not None,
            gamed_data=args.lc_data,
        )
    except PairingError as error:
        return fail("compare", error, 2)
    except LengthControlError as error:
        return fail("compare", f"length-controlled win rate: {error}", 1)
    print(json.dumps(result, indent=2) if args.json else format_result(result))
    return 0
