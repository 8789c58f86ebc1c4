"""The sqrt(3) norm analysis of the SymNoise paper (Lemmas 1-3, the data of Figures 1-5), by sampling.

For P ~ U(-1, 1)^d, E||P||^2 = d/3, while for N(0, 1)^d and for Bernoulli +-1 vectors E||P||^2 = d, so the ratio
of mean L2 norms Gaussian/Uniform and Bernoulli/Uniform tends to sqrt(3) as d grows (the ratio of mean norms is not
exactly the ratio of root mean squares at small d; e.g. at d = 1 it is 0.798/0.5 and 1/0.5). This is why the
Gaussian, Bernoulli and SymNoise scales divide NEFTune's alpha / sqrt(L d) by sqrt(3).

Two sweeps, as in the paper's figures, written to ``norm_ratios.csv`` and drawn as two plots with both ratios in
each (the paper draws each ratio of each sweep again on its own, Figures 2-5): the ratio against the dimension d
in 1..4096 with 256 sampled vectors per d (55 integer dimensions, log-spaced so that the small-d regime is visible
and the run takes about a second), and against the number of sampled vectors (64..256, step 16) at d = 4096. Everything is drawn from one
seeded ``numpy.random.Generator``, so a seed gives the same table.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from ..files import write_atomic, write_figure_atomic

SQRT3 = math.sqrt(3.0)
Sampler = Callable[[np.random.Generator, tuple[int, int]], np.ndarray]


def uniform(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """NEFTune's noise: U(-1, 1) per element."""
    return rng.uniform(-1.0, 1.0, size=shape)


def gaussian(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """N(0, 1) per element."""
    return rng.standard_normal(size=shape)


def bernoulli(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """+1 or -1 with probability 1/2 per element."""
    return rng.integers(0, 2, size=shape) * 2.0 - 1.0


SAMPLERS: dict[str, Sampler] = {"uniform": uniform, "gaussian": gaussian, "bernoulli": bernoulli}


@dataclass(frozen=True)
class NormRow:
    """Mean L2 norms of ``n_points`` vectors of dimension ``dim`` per distribution, and the two ratios."""

    sweep: str
    dim: int
    n_points: int
    mean_norm_uniform: float
    mean_norm_gaussian: float
    mean_norm_bernoulli: float
    ratio_gaussian_uniform: float
    ratio_bernoulli_uniform: float
    sqrt3: float = SQRT3


CSV_COLUMNS = [f.name for f in fields(NormRow)]


def dimension_grid(max_dim: int = 4096, n_dims: int = 64) -> list[int]:
    """``n_dims`` log-spaced integer dimensions from 1 to ``max_dim`` (duplicates after rounding removed)."""
    return sorted({int(round(d)) for d in np.geomspace(1, max_dim, n_dims)})


def points_grid(low: int = 64, high: int = 256, step: int = 16) -> list[int]:
    """Numbers of sampled vectors from ``low`` to ``high`` inclusive."""
    return list(range(low, high + 1, step))


def mean_norm(sampler: Sampler, rng: np.random.Generator, dim: int, n_points: int) -> float:
    """Mean L2 norm of ``n_points`` vectors of dimension ``dim`` drawn by ``sampler``."""
    return float(np.linalg.norm(sampler(rng, (n_points, dim)), axis=1).mean())


def norm_row(
    sweep: str, dim: int, n_points: int, rng: np.random.Generator, samplers: Mapping[str, Sampler] = SAMPLERS
) -> NormRow:
    """One row of the table; the three distributions are drawn in a fixed order from the same generator."""
    means = {
        name: mean_norm(samplers[name], rng, dim, n_points) for name in ("uniform", "gaussian", "bernoulli")
    }
    return NormRow(
        sweep=sweep,
        dim=dim,
        n_points=n_points,
        mean_norm_uniform=means["uniform"],
        mean_norm_gaussian=means["gaussian"],
        mean_norm_bernoulli=means["bernoulli"],
        ratio_gaussian_uniform=means["gaussian"] / means["uniform"],
        ratio_bernoulli_uniform=means["bernoulli"] / means["uniform"],
    )


def norm_table(
    seed: int = 0,
    dims: Sequence[int] | None = None,
    points: Sequence[int] | None = None,
    dim_points: int = 256,
    max_dim: int = 4096,
    samplers: Mapping[str, Sampler] = SAMPLERS,
) -> list[NormRow]:
    """Both sweeps: ``dimension`` rows (``dim_points`` vectors per d) then ``points`` rows (at d = ``max_dim``).

    ``samplers`` replaces the distributions, e.g. to check that a wrong one is caught by :func:`sqrt3_misses`.
    """
    rng = np.random.default_rng(seed)
    samplers = {**SAMPLERS, **samplers}
    dims = dimension_grid(max_dim) if dims is None else dims
    points = points_grid() if points is None else points
    rows = [norm_row("dimension", d, dim_points, rng, samplers) for d in dims]
    rows += [norm_row("points", max_dim, n, rng, samplers) for n in points]
    return rows


def sqrt3_misses(rows: Sequence[NormRow], dim: int = 4096, tolerance: float = 0.01) -> list[str]:
    """Descriptions of every ratio at dimension ``dim`` that differs from sqrt(3) by more than ``tolerance``
    (relative); empty when the lemmas hold empirically. A table without any row at ``dim`` is itself a miss."""
    at_dim = [row for row in rows if row.dim == dim]
    if not at_dim:
        return [f"no row at d = {dim} to compare with sqrt(3)"]
    misses = []
    for row in at_dim:
        for name in ("ratio_gaussian_uniform", "ratio_bernoulli_uniform"):
            value = getattr(row, name)
            if abs(value / SQRT3 - 1) > tolerance:
                misses.append(
                    f"{name} = {value:.5f} at d = {row.dim} with {row.n_points} vectors ({row.sweep} "
                    f"sweep) misses sqrt(3) = {SQRT3:.5f} by more than {tolerance:.0%}"
                )
    return misses


def write_csv(rows: Sequence[NormRow], path: Path) -> None:
    """The rows as a CSV with a header, written atomically."""

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            writer.writerows(asdict(r) for r in rows)

    write_atomic(path, write)


def plot_ratios(rows: Sequence[NormRow], x_field: str, title: str, path: Path, log_x: bool = False) -> None:
    """One PNG: both ratios against ``x_field`` (``dim`` or ``n_points``) with the analytic sqrt(3) line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [getattr(r, x_field) for r in rows]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.plot(x, [r.ratio_gaussian_uniform for r in rows], marker=".", label="Gaussian / Uniform")
    ax.plot(x, [r.ratio_bernoulli_uniform for r in rows], marker=".", label="Bernoulli / Uniform")
    ax.axhline(SQRT3, color="black", linestyle="--", linewidth=1, label="sqrt(3)")
    if log_x:
        ax.set_xscale("log", base=2)
    ax.set_xlabel({"dim": "dimension d", "n_points": "number of sampled vectors"}[x_field])
    ax.set_ylabel("ratio of mean L2 norms")
    ax.set_title(title)
    ax.legend()
    write_figure_atomic(path, fig)


def write_outputs(rows: Sequence[NormRow], out_dir: str | Path) -> list[Path]:
    """The CSV and the two figures (ratio vs dimension, ratio vs number of points); returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    by_dim = [r for r in rows if r.sweep == "dimension"]
    by_points = [r for r in rows if r.sweep == "points"]
    paths = [
        out_dir / "norm_ratios.csv",
        out_dir / "norm_ratio_vs_dimension.png",
        out_dir / "norm_ratio_vs_points.png",
    ]
    write_csv(rows, paths[0])
    n = by_dim[0].n_points if by_dim else 0
    plot_ratios(by_dim, "dim", f"Norm ratios vs dimension ({n} vectors per d)", paths[1], log_x=True)
    d = by_points[0].dim if by_points else 0
    plot_ratios(by_points, "n_points", f"Norm ratios vs number of vectors (d = {d})", paths[2])
    return paths
