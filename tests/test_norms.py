"""The sqrt(3) norm analysis: the written CSV and figures, the lemmas' values, and the failure exit path."""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

import numpy as np
import pytest

from symnoise.cli import norms as norms_cli
from symnoise.cli.main import main
from symnoise.evaluation.norms import (
    CSV_COLUMNS,
    SQRT3,
    dimension_grid,
    norm_table,
    points_grid,
    sqrt3_misses,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("norms")
    assert main(["norms", "--out", str(out), "--seed", "0"]) == 0
    return out


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_csv_columns_and_rows(written):
    rows = read_csv(written / "norm_ratios.csv")
    assert list(rows[0]) == CSV_COLUMNS
    by_dim = [r for r in rows if r["sweep"] == "dimension"]
    by_points = [r for r in rows if r["sweep"] == "points"]
    assert len(rows) == len(by_dim) + len(by_points) == 55 + 13
    assert [int(r["dim"]) for r in by_dim] == dimension_grid() and dimension_grid()[0] == 1
    assert dimension_grid()[-1] == 4096 and {int(r["n_points"]) for r in by_dim} == {256}
    assert [int(r["n_points"]) for r in by_points] == points_grid() == list(range(64, 257, 16))
    assert {int(r["dim"]) for r in by_points} == {4096}
    assert {float(r["sqrt3"]) for r in rows} == {SQRT3}


def test_ratios_at_4096_within_one_percent_of_sqrt3(written):
    at_4096 = [r for r in read_csv(written / "norm_ratios.csv") if int(r["dim"]) == 4096]
    assert len(at_4096) == 14
    for row in at_4096:
        for name in ("ratio_gaussian_uniform", "ratio_bernoulli_uniform"):
            assert float(row[name]) == pytest.approx(SQRT3, rel=0.01), (name, row)


def test_lemma_norms():
    """E||U||^2 = d/3 and E||P||^2 = d for Gaussian and Bernoulli; Bernoulli norms are exactly sqrt(d).

    Tolerances: at d = 4096 the relative sd of one norm is <= 1.2 %, of a mean of 256 under 0.1 %; at d = 1,
    sd(|U|) = 0.29 and sd(|N|) = 0.60, so over 256 draws 0.08 and 0.15 are more than 4 standard errors.
    """
    rows = norm_table(seed=1, dims=[1, 4096], points=[])
    small, large = rows
    assert small.mean_norm_bernoulli == 1.0 and large.mean_norm_bernoulli == pytest.approx(64.0, rel=1e-12)
    assert small.mean_norm_uniform == pytest.approx(0.5, abs=0.08)
    assert small.mean_norm_gaussian == pytest.approx(math.sqrt(2 / math.pi), abs=0.15)
    assert large.mean_norm_uniform == pytest.approx(math.sqrt(4096 / 3), rel=0.005)
    assert large.mean_norm_gaussian == pytest.approx(64.0, rel=0.005)


def test_seeded_and_reproducible():
    a = norm_table(seed=3, dims=[7, 300], points=[64])
    assert a == norm_table(seed=3, dims=[7, 300], points=[64])
    assert a != norm_table(seed=4, dims=[7, 300], points=[64])


@pytest.mark.floor
def test_pngs_are_valid_images(written):
    import matplotlib.image

    for name in ("norm_ratio_vs_dimension.png", "norm_ratio_vs_points.png"):
        path = written / name
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        image = matplotlib.image.imread(path)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def wide_gaussian(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A wrong distribution: N(0, 2^2) instead of N(0, 1), so its ratio is 2 sqrt(3)."""
    return 2.0 * rng.standard_normal(size=shape)


def test_wrong_distribution_fails_with_message(tmp_path, capsys):
    args = argparse.Namespace(out=str(tmp_path), seed=0)
    assert norms_cli.run(args, samplers={"gaussian": wide_gaussian}) == 1
    err = capsys.readouterr().err
    assert (
        "ratio_gaussian_uniform" in err and "misses sqrt(3)" in err and "ratio_bernoulli_uniform" not in err
    )
    assert (tmp_path / "norm_ratios.csv").is_file()


def test_sqrt3_misses():
    rows = norm_table(seed=0, dims=[4096], points=[])
    assert sqrt3_misses(rows) == []
    assert sqrt3_misses(norm_table(seed=0, dims=[64], points=[])) == [
        "no row at d = 4096 to compare with sqrt(3)"
    ]
    bad = norm_table(seed=0, dims=[4096], points=[], samplers={"bernoulli": wide_gaussian})
    (miss,) = sqrt3_misses(bad)
    assert miss.startswith("ratio_bernoulli_uniform = 3.46")
