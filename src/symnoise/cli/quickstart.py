"""``symnoise quickstart``: train no noise, NEFTune and SymNoise on a built-in task set and compare them.

Needs no download and no GPU; 3.5 to 6 minutes on 2 idle CPU cores, depending on the CPU (see the README).
Run directories and ``results.md`` go under ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shutil
from pathlib import Path

from .options import add_flags


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", type=Path, default=Path("runs/quickstart"), help="where the runs are written"
    )
    parser.add_argument("--methods", default="none,neftune,symnoise", help="comma-separated noise methods")
    parser.add_argument("--epochs", type=float, default=None, help="training epochs per method")
    add_flags(parser, {"--fresh": "delete --out first (otherwise it must not exist)"})


def run(args: argparse.Namespace) -> int:
    from transformers.utils import logging as transformers_logging

    from ..files import write_text_atomic
    from ..quickstart import (
        METHOD_ALPHAS,
        QuickstartSettings,
        describe,
        differences,
        format_differences,
        format_table,
        run_quickstart,
    )

    transformers_logging.disable_progress_bar()  # weight loading and saving bars, six times per run
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("symnoise.quickstart").setLevel(logging.INFO)  # pretraining progress
    # Case-insensitive like noise.method in configs: the README writes NEFTune and SymNoise.
    methods = tuple(m.strip().lower() for m in args.methods.split(",") if m.strip())
    unknown = [m for m in methods if m not in METHOD_ALPHAS]
    if unknown or not methods:
        print(
            f"error: --methods: unknown {', '.join(unknown) or '(none given)'}; allowed: {', '.join(METHOD_ALPHAS)}"
        )
        return 2
    if args.out.exists():
        if not args.fresh:
            print(f"error: {args.out} exists; pass --fresh to replace it or choose another --out")
            return 2
        shutil.rmtree(args.out)
    settings = QuickstartSettings(out_dir=args.out, methods=methods)
    if args.epochs is not None:
        settings = dataclasses.replace(settings, epochs=args.epochs)
    scores = run_quickstart(settings)
    report = "\n\n".join(
        [describe(settings), format_table(scores, settings.n_eval), format_differences(differences(scores))]
    )
    write_text_atomic(args.out / "results.md", report + "\n")
    print(report)
    print(f"\nruns and this table: {args.out}/")
    return 0
