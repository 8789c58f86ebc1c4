"""The estimators of `symnoise analyze`, written against callables so that they work on any loss of embeddings.

Background. For zero-mean noise ``e``, ``L(x + e) = L(x) + g.e + 1/2 e'He + O(e^3)``: one-sided noise and the
symmetric pair ``(x + e, x - e)`` optimise the same objective in expectation, and the pair cancels the first-order
term ``g.e`` in every sample. SymNoise is antithetic sampling of NEFTune's objective: the same expected gradient
with a lower variance. These functions measure that.

* `gradient_study`: the variance across noise draws of three gradient estimators at equal compute (one draw:
  1 backward; two independent draws averaged: 2; the pair ``(e, -e)`` averaged: 2), their mean's distance to the
  clean gradient, and the antithetic ratio var(pair) / var(two independent draws).
* `directional_differences`: the first-order asymmetry ``|L(x + e) - L(x - e)| / 2`` and the curvature
  ``L(x + e) + L(x - e) - 2 L(x)`` along random directions.
* `hutchinson_trace`: the trace of the Hessian from quadratic forms ``v'Hv`` with Rademacher probes ``v``.

Every figure comes with a 95% confidence interval from a seeded percentile bootstrap over its independent terms
(draws, pairs of draws or probes), so the same seed gives the same interval.

Variance without storing every gradient. Gradients can be as large as the model, so the variance is the unbiased
U-statistic on disjoint pairs of draws: for estimates ``A_m, B_m`` of two independent draws, ``||A_m - B_m||^2 / 2``
has expectation ``trace Cov`` exactly, and the pairs ``m = 1..K/2`` are independent, so their mean and its bootstrap
interval need only two draws' estimates in memory at a time. Likewise ``(A_m - c).(B_m - c)`` is an unbiased
estimate of ``||E[estimate] - c||^2``, the squared distance of the mean gradient to the clean gradient ``c``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

CONFIDENCE = 0.95
RESAMPLES = 2000
SCHEMES = ("one_draw", "two_draws", "pair")
# Forward/backward passes per estimate: the comparison is at equal compute between two_draws and pair.
SCHEME_COST = {"one_draw": 1, "two_draws": 2, "pair": 2}

GradientAt = Callable[[Any, float], torch.Tensor]  # (draw or None for clean, sign) -> flat gradient
LossAt = Callable[[Any, float], float]  # (draw or None for clean, sign) -> loss


# ----------------------------------------------------------------------------------------------- intervals


def _percentiles(values: np.ndarray) -> list[float]:
    tail = (1.0 - CONFIDENCE) / 2.0 * 100.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return [float(low), float(high)]


def summarize(values: Sequence[float], seed: int) -> dict[str, Any]:
    """Mean of independent terms with its standard error and a 95% percentile-bootstrap interval (seeded)."""
    data = np.asarray(values, dtype=np.float64)
    n = len(data)
    if n == 0:
        raise ValueError("no values to summarise")
    mean = float(data.mean())
    se = float(data.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    if n == 1:
        return {"mean": mean, "se": se, "ci": [mean, mean], "n": n}
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, n, size=(RESAMPLES, n))].mean(axis=1)
    return {"mean": mean, "se": se, "ci": _percentiles(means), "n": n}


def ratio_of_means(numerator: Sequence[float], denominator: Sequence[float], seed: int) -> dict[str, Any]:
    """``mean(numerator) / mean(denominator)`` with a paired bootstrap interval: terms of the same index come
    from the same draws, so they are resampled together."""
    top = np.asarray(numerator, dtype=np.float64)
    bottom = np.asarray(denominator, dtype=np.float64)
    if len(top) != len(bottom) or len(top) == 0:
        raise ValueError("numerator and denominator need the same, non-zero number of terms")
    estimate = float(top.mean() / bottom.mean()) if bottom.mean() != 0 else float("nan")
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(top), size=(RESAMPLES, len(top)))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = top[index].mean(axis=1) / bottom[index].mean(axis=1)
    ratios = ratios[np.isfinite(ratios)]
    ci = _percentiles(ratios) if len(ratios) else [float("nan"), float("nan")]
    return {"estimate": estimate, "ci": ci, "n": len(top)}


# ----------------------------------------------------------------------------------------------- gradients


def pair_gradient(gradient: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, e: torch.Tensor):
    """The symmetric pair's gradient estimate ``(grad L(x + e) + grad L(x - e)) / 2``."""
    return (gradient(x + e) + gradient(x - e)) / 2


def _scheme_estimates(gradient_at: GradientAt, sample: Callable[[], Any]) -> dict[str, torch.Tensor]:
    """One estimate of each scheme from two fresh draws ``e1, e2``: ``g(x + e1)``, ``(g(x + e1) + g(x + e2)) / 2``
    and ``(g(x + e1) + g(x - e1)) / 2`` (three backward passes, three gradient-sized buffers)."""
    first, second = sample(), sample()
    one = gradient_at(first, 1.0)
    two = gradient_at(second, 1.0).add_(one).mul_(0.5)
    pair = gradient_at(first, -1.0).add_(one).mul_(0.5)
    return {"one_draw": one, "two_draws": two, "pair": pair}


def _dot(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.dot(a.double(), b.double()))


@dataclass
class GradientStudy:
    """What `gradient_study` measured; ``means`` and ``clean`` are the flat gradients (for tests and plots)."""

    variance: dict[str, dict[str, Any]]
    squared_bias: dict[str, dict[str, Any]]
    distance_of_mean: dict[str, float]
    clean_norm: float
    antithetic_ratio: dict[str, Any]
    pair_vs_one_draw: dict[str, Any]
    means: dict[str, torch.Tensor]
    clean: torch.Tensor
    draws: int

    def to_dict(self) -> dict[str, Any]:
        """The JSON block: per scheme its variance, the mean gradient's distance to the clean one, the ratios."""
        distance = {}
        for scheme in SCHEMES:
            bias = self.squared_bias[scheme]
            root = [math.sqrt(max(bound, 0.0)) for bound in bias["ci"]]
            value = math.sqrt(max(bias["mean"], 0.0))
            distance[scheme] = {
                "distance": value,
                "ci": root,
                "relative": value / self.clean_norm if self.clean_norm else float("nan"),
                "distance_of_sample_mean": self.distance_of_mean[scheme],
            }
        return {
            "draws": self.draws,
            "passes_per_estimate": dict(SCHEME_COST),
            "variance": {
                scheme: {"variance": v["mean"], "se": v["se"], "ci": v["ci"]}
                for scheme, v in self.variance.items()
            },
            "antithetic_ratio": self.antithetic_ratio,
            "pair_vs_one_draw": self.pair_vs_one_draw,
            "mean_gradient_distance": distance,
            "clean_gradient_norm": self.clean_norm,
        }


def gradient_study(
    gradient_at: GradientAt, sample: Callable[[], Any], draws: int, seed: int
) -> GradientStudy:
    """Variance across ``draws`` noise draws of each scheme's gradient estimate, and of its mean to the clean one.

    ``gradient_at(draw, sign)`` is the flat gradient at ``x + sign * draw`` (``draw`` None: at ``x``), a new tensor
    the study may modify; ``sample()`` returns a fresh draw. ``draws`` (even, at least 4) estimates are made per
    scheme; the variance (trace of the covariance) is the mean of ``||A_m - B_m||^2 / 2`` over the ``draws / 2``
    disjoint pairs of estimates, an unbiased estimate. The antithetic ratio is var(pair) / var(two_draws).
    """
    if draws < 4 or draws % 2:
        raise ValueError(f"draws must be an even number of at least 4, got {draws}")
    clean = gradient_at(None, 1.0)
    sums = {scheme: torch.zeros_like(clean) for scheme in SCHEMES}
    variance_terms: dict[str, list[float]] = {scheme: [] for scheme in SCHEMES}
    bias_terms: dict[str, list[float]] = {scheme: [] for scheme in SCHEMES}
    for _ in range(draws // 2):
        first = _scheme_estimates(gradient_at, sample)
        for scheme in SCHEMES:
            sums[scheme].add_(first[scheme])
            first[scheme].sub_(clean)  # A - c: only differences are needed from here on
        second = _scheme_estimates(gradient_at, sample)
        for scheme in SCHEMES:
            sums[scheme].add_(second[scheme])
            second[scheme].sub_(clean)
            bias_terms[scheme].append(_dot(first[scheme], second[scheme]))
            difference = first[scheme].sub_(second[scheme])
            variance_terms[scheme].append(_dot(difference, difference) / 2.0)
        del first, second
    means = {scheme: total.div_(draws) for scheme, total in sums.items()}
    return GradientStudy(
        variance={s: summarize(variance_terms[s], seed + i) for i, s in enumerate(SCHEMES)},
        squared_bias={s: summarize(bias_terms[s], seed + 10 + i) for i, s in enumerate(SCHEMES)},
        distance_of_mean={s: float(torch.linalg.vector_norm((means[s] - clean).double())) for s in SCHEMES},
        clean_norm=float(torch.linalg.vector_norm(clean.double())),
        antithetic_ratio=ratio_of_means(variance_terms["pair"], variance_terms["two_draws"], seed + 20),
        pair_vs_one_draw=ratio_of_means(variance_terms["pair"], variance_terms["one_draw"], seed + 21),
        means=means,
        clean=clean,
        draws=draws,
    )


# ---------------------------------------------------------------------------------------------- directions


def symmetric_terms(loss: Callable[[torch.Tensor], Any], x: torch.Tensor, e: torch.Tensor) -> tuple[Any, Any]:
    """``(|L(x + e) - L(x - e)| / 2, L(x + e) + L(x - e) - 2 L(x))``: the first-order asymmetry the pair cancels
    and the curvature along ``e`` it keeps (for a quadratic, exactly ``|grad L(x).e|`` and ``e'He``)."""
    plus, minus, centre = loss(x + e), loss(x - e), loss(x)
    return abs(plus - minus) / 2, plus + minus - 2 * centre


def directional_differences(loss_at: LossAt, sample: Callable[[], Any], draws: int, seed: int) -> dict:
    """Mean asymmetry and curvature over ``draws`` fresh directions, each with its interval.

    ``loss_at(draw, sign)`` is the loss at ``x + sign * draw`` (``draw`` None: at ``x``, computed once).
    """
    if draws < 2:
        raise ValueError(f"draws must be at least 2, got {draws}")
    centre = float(loss_at(None, 1.0))
    asymmetry, curvature = [], []
    for _ in range(draws):
        draw = sample()
        plus, minus = float(loss_at(draw, 1.0)), float(loss_at(draw, -1.0))
        asymmetry.append(abs(plus - minus) / 2.0)
        curvature.append(plus + minus - 2.0 * centre)
    return {"asymmetry": summarize(asymmetry, seed), "curvature": summarize(curvature, seed + 1)}


# ------------------------------------------------------------------------------------------------ Hessian


def rademacher_like(x: torch.Tensor, generator: torch.Generator, mask: torch.Tensor | None = None):
    """A +-1 tensor shaped like ``x`` (zero where ``mask``, broadcast over the last axis, is false)."""
    bits = torch.randint(0, 2, x.shape, generator=generator, device=x.device).to(x.dtype)
    probe = bits.mul_(2).sub_(1)
    return probe if mask is None else probe * mask.unsqueeze(-1).to(x.dtype)


def hessian_quadratic_form(loss: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, v: torch.Tensor):
    """``v' H v`` for the Hessian of ``loss`` at ``x``, by double backward (the Hessian is never formed)."""
    point = x.detach().requires_grad_(True)
    (gradient,) = torch.autograd.grad(loss(point), point, create_graph=True)
    (hv,) = torch.autograd.grad((gradient * v).sum(), point)
    return (hv * v).sum()


def hutchinson_trace(quadratic_form: Callable[[int], float], probes: int, seed: int) -> dict[str, Any]:
    """Hutchinson's estimate of ``trace H`` as the mean of ``v'Hv`` over Rademacher probes (unbiased), with its
    standard error and interval. ``quadratic_form(p)`` draws probe ``p`` and returns its ``v'Hv``."""
    if probes < 2:
        raise ValueError(f"probes must be at least 2, got {probes}")
    values = [float(quadratic_form(p)) for p in range(probes)]
    summary = summarize(values, seed)
    return {"estimate": summary["mean"], "se": summary["se"], "ci": summary["ci"], "probes": probes}
