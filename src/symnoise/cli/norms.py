"""``symnoise norms``: the SymNoise paper's sqrt(3) norm analysis; writes a CSV and two PNG figures and fails
(exit 1) if the sampled ratio at d = 4096 misses sqrt(3) by more than 1%."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping

from symnoise.evaluation.norms import SQRT3, Sampler, norm_table, sqrt3_misses, write_outputs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="norms", metavar="DIR", help="output folder (default ./norms)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the numpy Generator (default 0)")


def run(args: argparse.Namespace, samplers: Mapping[str, Sampler] | None = None) -> int:
    rows = norm_table(seed=args.seed, samplers=samplers or {})
    paths = write_outputs(rows, args.out)
    last = [r for r in rows if r.sweep == "dimension"][-1]
    print(
        f"d = {last.dim}, {last.n_points} vectors: Gaussian/Uniform {last.ratio_gaussian_uniform:.4f}, "
        f"Bernoulli/Uniform {last.ratio_bernoulli_uniform:.4f}, sqrt(3) = {SQRT3:.4f}"
    )
    print("wrote " + ", ".join(str(p) for p in paths))
    misses = sqrt3_misses(rows)
    for miss in misses:
        print(f"symnoise norms: error: {miss}", file=sys.stderr)
    return 1 if misses else 0
