"""`symnoise analyze`: the measurements for each run, on its training and held-out examples, noise off.

For each model (a run's final model, or a checkpoint) and each split of examples:

* ``gradients``: at the run's noise distribution and scale (alpha / sqrt(L d), times 1/sqrt(3) for norm-matched
  Gaussian and Bernoulli noise), the variance across draws of one draw, two independent draws averaged and one
  SymNoise pair averaged, the mean gradient's distance to the clean gradient, and the antithetic ratio
  (`symnoise.analysis.estimators.gradient_study`). A run trained without noise is measured with NEFTune's uniform
  noise at alpha 5, and says so.
* ``directions``: for Rademacher (``bernoulli``), Gaussian and uniform directions at each alpha of the sweep and the
  run's own: the asymmetry ``|L(x + e) - L(x - e)| / 2`` and the curvature ``L(x + e) + L(x - e) - 2 L(x)``.
* ``hessian_trace``: Hutchinson's estimate of the trace of the Hessian w.r.t. the input embeddings.
* ``loss``: the loss with noise off (token-weighted mean, interval from a bootstrap over examples).

The run's ``antithetic_ratio`` is the training split's; ``losses`` sets the training loss beside the held-out loss
(NEFTune Sec. 5.1's overfitting view: noise lowers overfitting when the training loss rises and the held-out loss
does not). Every random choice derives from ``seed``, so the numbers repeat, and every run is measured with the
same draws and probes (common random numbers).
"""

from __future__ import annotations

import sys
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import noise as N
from ..methods import METHOD_TABLE
from .estimators import (
    RESAMPLES,
    directional_differences,
    gradient_study,
    hutchinson_trace,
    ratio_of_means,
)
from .inputs import DataSources, Target, load_model, read_records, resolve_targets, tokenise
from .lm import Direction, EmbeddingLoss, make_batches

DIRECTION_DISTRIBUTIONS = ("bernoulli", "gaussian", "uniform")  # Rademacher, Gaussian, uniform
FALLBACK_DISTRIBUTION, FALLBACK_ALPHA = "uniform", 5.0  # for runs trained without noise: NEFTune's default


@dataclass(frozen=True)
class Settings:
    """Sizes and seeds of one analysis (the command's options)."""

    examples: int = 32
    draws: int = 32
    probes: int = 32
    alphas: tuple[float, ...] = (1.0, 5.0, 10.0, 15.0)
    batch_size: int = 8
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"  # curvature is a difference of nearby losses: half precision would drown it
    gradient_device: str | None = None  # None: the model's device

    def __post_init__(self) -> None:
        if self.examples < 1 or self.batch_size < 1:
            raise ValueError("examples and batch size must be at least 1")
        if self.draws < 4 or self.draws % 2:
            raise ValueError(f"draws must be an even number of at least 4, got {self.draws}")
        if self.probes < 2:
            raise ValueError(f"probes must be at least 2, got {self.probes}")
        if not self.alphas or any(a <= 0 for a in self.alphas):
            raise ValueError("alphas must be positive numbers")


def seed_for(seed: int, *parts: object) -> int:
    """A seed for one quantity, derived from the analysis seed and its name (independent of the order of work).
    Runs are not part of the name: each run is measured with the same draws and probes, so that differences
    between runs are not blurred by different noise."""
    return zlib.crc32(repr((seed, *parts)).encode()) & 0x7FFFFFFF


def direction_sampler(distribution: str, alpha: float, factor: float, seed: int) -> Callable[[], Direction]:
    """Fresh draws: each call a new seed from a seeded stream."""
    rng = np.random.default_rng(seed)
    return lambda: Direction(int(rng.integers(0, 2**62)), distribution, alpha, factor)


def gradient_noise(target: Target) -> dict[str, Any]:
    """The distribution and scale the gradients are measured at: the run's own, or NEFTune's for a run without."""
    noise = target.noise
    if noise.is_active:
        distribution, alpha, note = noise.distribution, noise.alpha, ""
    else:
        distribution, alpha = FALLBACK_DISTRIBUTION, FALLBACK_ALPHA
        note = f"the run trained without noise; measured with {distribution} noise at alpha {alpha:g}"
    factor = N.distribution_factor(distribution, noise.match_uniform_norm)
    return {"distribution": distribution, "alpha": alpha, "factor": factor, "note": note}


def loss_summary(loss: EmbeddingLoss, seed: int) -> dict[str, Any]:
    """The noise-off loss (mean over trained tokens) with a bootstrap interval over examples."""
    sums, counts = loss.per_example()
    result = ratio_of_means(sums, counts, seed)
    return {"mean": result["estimate"], "ci": result["ci"], "examples": len(sums), "tokens": int(sum(counts))}


def analyze_split(loss: EmbeddingLoss, target: Target, settings: Settings, split: str) -> dict[str, Any]:
    """Every measurement on one split's examples."""
    key = (split,)  # not the run: every run gets the same draws (common random numbers), so runs pair up
    setting = gradient_noise(target)
    sample = direction_sampler(
        setting["distribution"],
        setting["alpha"],
        setting["factor"],
        seed_for(settings.seed, *key, "gradient"),
    )
    study = gradient_study(
        loss.gradient_at, sample, settings.draws, seed_for(settings.seed, *key, "gradient-ci")
    )
    alphas = sorted({*settings.alphas, float(setting["alpha"])})
    directions: dict[str, dict[str, Any]] = {}
    for distribution in DIRECTION_DISTRIBUTIONS:
        factor = N.distribution_factor(distribution, target.noise.match_uniform_norm)
        directions[distribution] = {}
        for alpha in alphas:
            draws = direction_sampler(
                distribution, alpha, factor, seed_for(settings.seed, *key, distribution, alpha)
            )
            measured = directional_differences(
                loss.loss_at, draws, settings.draws, seed_for(settings.seed, *key, distribution, alpha, "ci")
            )
            directions[distribution][f"{alpha:g}"] = {"alpha": alpha, "factor": factor, **measured}
    probe_seed = seed_for(settings.seed, *key, "probes")
    hessian = hutchinson_trace(
        lambda p: loss.hessian_form(probe_seed + p),
        settings.probes,
        seed_for(settings.seed, *key, "hessian-ci"),
    )
    return {
        "examples": sum(len(batch.input_ids) for batch in loss.batches),
        "loss": loss_summary(loss, seed_for(settings.seed, *key, "loss")),
        "gradient_noise": setting,
        "gradients": study.to_dict(),
        "directions": directions,
        "hessian_trace": hessian,
    }


def _losses(splits: dict[str, dict[str, Any]]) -> dict[str, Any]:
    train, heldout = splits["train"]["loss"], splits["heldout"]["loss"]
    return {"train": train, "heldout": heldout, "gap": heldout["mean"] - train["mean"]}


def analyze_target(
    target: Target, records: dict[str, tuple[list, bool]], settings: Settings, log=print
) -> dict[str, Any]:
    """Load one model and measure it on each split; the run's entry of ``analysis.json``."""
    model, tokenizer = load_model(target, settings.device, settings.dtype)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = model.get_input_embeddings().weight.device
    splits = {}
    for split, (split_records, from_end) in records.items():
        items = tokenise(split_records, from_end, settings.examples, tokenizer, target)
        batches = make_batches(items, settings.batch_size, pad_id, target.noise, device)
        log(
            f"{target.label}: {split}: {len(items)} examples, {settings.draws} draws, {settings.probes} probes"
        )
        loss = EmbeddingLoss(model, batches, settings.gradient_device)
        splits[split] = analyze_split(loss, target, settings, split)
    ratio = splits["train"]["gradients"]["antithetic_ratio"]
    noise = target.noise
    return {
        "label": target.label,
        "run": str(target.run_dir),
        "model": str(target.model_dir),
        "method": noise.method,
        "method_label": METHOD_TABLE[noise.method].label,
        "alpha": noise.alpha,
        "distribution": noise.distribution,
        "match_uniform_norm": noise.match_uniform_norm,
        "symmetric": noise.symmetric,
        "lora": target.is_lora,
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "antithetic_ratio": ratio["estimate"],
        "antithetic_ratio_ci": ratio["ci"],
        "losses": _losses(splits),
        "splits": splits,
    }


def run_analysis(
    paths: list[Path], sources: DataSources, settings: Settings, with_checkpoints: bool = False, log=None
) -> dict[str, Any]:
    """Check every input (no model loaded), then analyse each target; the content of ``analysis.json``."""
    log = log or (lambda text: print(text, file=sys.stderr))
    targets = resolve_targets(paths, with_checkpoints)
    records = read_records(sources)
    runs = [analyze_target(target, records, settings, log) for target in targets]
    return {
        "settings": {**asdict(settings), "alphas": list(settings.alphas), "bootstrap_resamples": RESAMPLES},
        "data": {
            "train": f"first {sources.examples} usable examples of {sources.train}",
            "heldout": sources.heldout_description,
        },
        "confidence": "95% percentile bootstrap over independent terms (draws, pairs of draws, probes, examples)",
        "runs": runs,
    }
