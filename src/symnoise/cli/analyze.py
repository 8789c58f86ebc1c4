"""``symnoise analyze RUN... --data FILE``: gradient variance of each noise scheme at equal compute, the antithetic
ratio, asymmetry and curvature along random directions, the Hessian trace and the overfitting view, at each run's
final model (and, with ``--checkpoints``, every checkpoint), noise off, on training and held-out examples.

Writes ``analysis.json``, ``analysis.md`` and plots into ``--out`` (default: RUN/analysis for one run, ./analysis
for several) and prints the markdown. Cost per run and split: 3 x draws forward/backward passes, 6 x draws x
(alphas) forward passes and 2 x probes double-backward passes over the examples, in micro-batches of --batch-size.

Examples::

    symnoise analyze runs/neft runs/symnoise --data alpaca.json --heldout alpaca_eval.json --examples 64
    symnoise analyze runs/symnoise/checkpoint-200 --data alpaca.json --draws 16 --alphas 5,15
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..layout import ANALYSIS_DIR, RunLayout
from .options import add_flags, fail


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _alphas(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers such as 1,5,10,15, got {text!r}"
        ) from None
    if not values or any(not value > 0 for value in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..dtypes import DTYPES

    parser.epilog = __doc__.split("Examples::", 1)[1]
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "runs", nargs="+", type=Path, metavar="RUN", help="run directories or RUN/checkpoint-N"
    )
    parser.add_argument(
        "--data", type=Path, required=True, metavar="FILE", help="examples (any training format)"
    )
    parser.add_argument(
        "--heldout",
        type=Path,
        metavar="FILE",
        help="held-out examples (default: the last --examples of --data; held out only if the run did not train "
        "on that file)",
    )
    parser.add_argument(
        "--out", type=Path, metavar="DIR", help="output folder (default RUN/analysis or ./analysis)"
    )
    parser.add_argument("--examples", type=_positive_int, default=32, metavar="N", help="examples per split")
    parser.add_argument(
        "--draws", type=_positive_int, default=32, metavar="K", help="noise draws per estimate (even, >= 4)"
    )
    parser.add_argument("--probes", type=_positive_int, default=32, metavar="P", help="Hutchinson probes")
    parser.add_argument(
        "--alphas", type=_alphas, default=(1.0, 5.0, 10.0, 15.0), help="alpha sweep for the directions"
    )
    parser.add_argument("--batch-size", type=_positive_int, default=8, help="examples per forward")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random draw and bootstrap")
    parser.add_argument("--device", default="auto", help="auto (first GPU, else CPU), cpu, cuda, cuda:1 ...")
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default="float32",
        help="weights dtype (default float32: the curvature is a small difference of losses, which half "
        "precision drowns; auto: bfloat16 or float16 on a GPU)",
    )
    parser.add_argument(
        "--gradient-device",
        metavar="DEVICE",
        help="where the gradient study keeps its about ten gradient-sized float32 buffers (default: the model's "
        "device; cpu for a full fine-tune too large for them on the GPU)",
    )
    add_flags(parser, {"--checkpoints": "also analyse every checkpoint of each run"})


def default_out(runs: list[Path]) -> Path:
    return RunLayout(runs[0]).analysis if len(runs) == 1 else Path(ANALYSIS_DIR)


def run(args: argparse.Namespace) -> int:
    from ..analysis.analyze import Settings, run_analysis
    from ..analysis.inputs import AnalysisError, DataSources, check_data_file, resolve_targets
    from ..analysis.output import write_analysis

    try:
        settings = Settings(
            examples=args.examples, draws=args.draws, probes=args.probes, alphas=args.alphas,
            batch_size=args.batch_size, seed=args.seed, device=args.device, dtype=args.dtype,
            gradient_device=args.gradient_device,
        )  # fmt: skip
    except ValueError as error:
        return fail("analyze", error, 2)
    try:
        check_data_file(args.data, "--data")
        if args.heldout is not None:
            check_data_file(args.heldout, "--heldout")
        resolve_targets(args.runs, args.checkpoints)  # every run checked before any data or model is read
        sources = DataSources(args.data, args.heldout, args.examples)
        analysis = run_analysis(args.runs, sources, settings, args.checkpoints)
    except AnalysisError as error:
        return fail("analyze", error, 2)
    out = args.out or default_out(args.runs)
    try:
        files = write_analysis(analysis, out)
    except OSError as error:
        return fail("analyze", f"cannot write to {out} ({error})", 1)
    print(files.markdown.read_text(encoding="utf-8"))
    print("wrote " + ", ".join(str(p) for p in (files.json, files.markdown, *files.plots)), file=sys.stderr)
    return 0
