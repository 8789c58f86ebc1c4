"""The files `symnoise analyze` writes into ``--out``: ``analysis.json``, ``analysis.md`` (a table per quantity,
each value with its 95% interval) and the plots, every one written atomically.

Plots: ``gradient_variance.png`` (each scheme's variance per run, training examples), ``directions.png``
(asymmetry and curvature against alpha per distribution, training examples) and ``losses.png`` (training loss
with noise off beside the held-out loss, per run).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..files import write_figure_atomic, write_json_atomic, write_text_atomic
from ..layout import ANALYSIS_FILE
from .estimators import SCHEMES

JSON_FILE = ANALYSIS_FILE
MARKDOWN_FILE = "analysis.md"
VARIANCE_PLOT = "gradient_variance.png"
DIRECTIONS_PLOT = "directions.png"
LOSSES_PLOT = "losses.png"
SCHEME_TITLES = {"one_draw": "one draw", "two_draws": "two draws (mean)", "pair": "SymNoise pair (mean)"}
DIRECTION_TITLES = {"bernoulli": "Rademacher", "gaussian": "Gaussian", "uniform": "uniform"}


@dataclass(frozen=True)
class AnalysisFiles:
    json: Path
    markdown: Path
    plots: tuple[Path, ...]


def _num(value: float) -> str:
    return f"{value:.4g}"


def _with_ci(value: float, ci: list[float]) -> str:
    return f"{_num(value)} [{_num(ci[0])}, {_num(ci[1])}]"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _splits(run: dict[str, Any]):
    for split, result in run["splits"].items():
        yield run["label"], split, result


def markdown(analysis: dict[str, Any]) -> str:
    """Every quantity as a table: gradients, distances, directions, the Hessian trace and the losses."""
    runs = analysis["runs"]
    out = [
        "# Noise analysis",
        "",
        f"Training examples: {analysis['data']['train']}; held-out: {analysis['data']['heldout']}. "
        f"Intervals: {analysis['confidence']}.",
        "",
        "## Gradient variance across noise draws (trace of the covariance)",
        "",
        "Equal compute: one draw = 1 forward/backward; two independent draws averaged = 2; a SymNoise pair "
        "(e, -e) averaged = 2. Antithetic ratio = var(pair) / var(two draws).",
        "",
    ]
    rows = []
    for label, split, result in (item for run in runs for item in _splits(run)):
        gradients, noise = result["gradients"], result["gradient_noise"]
        variance = gradients["variance"]
        ratio = gradients["antithetic_ratio"]
        rows.append(
            [label, split, f"{noise['distribution']} {noise['alpha']:g}"]
            + [_with_ci(variance[s]["variance"], variance[s]["ci"]) for s in SCHEMES]
            + [_with_ci(ratio["estimate"], ratio["ci"])]
        )
    out += _table(
        ["run", "split", "noise"] + [SCHEME_TITLES[s] for s in SCHEMES] + ["antithetic ratio"], rows
    )
    out += ["", "## Mean gradient's distance to the clean gradient", ""]
    rows = []
    for label, split, result in (item for run in runs for item in _splits(run)):
        distance = result["gradients"]["mean_gradient_distance"]
        rows.append(
            [label, split, _num(result["gradients"]["clean_gradient_norm"])]
            + [_with_ci(distance[s]["distance"], distance[s]["ci"]) for s in SCHEMES]
        )
    out += _table(["run", "split", "clean gradient norm"] + [SCHEME_TITLES[s] for s in SCHEMES], rows)
    out += [
        "",
        "## Along random directions: asymmetry |L(x+e) - L(x-e)| / 2 and curvature L(x+e) + L(x-e) - 2 L(x)",
        "",
    ]
    rows = []
    for label, split, result in (item for run in runs for item in _splits(run)):
        for distribution, by_alpha in result["directions"].items():
            for alpha, measured in by_alpha.items():
                asym, curv = measured["asymmetry"], measured["curvature"]
                rows.append(
                    [label, split, DIRECTION_TITLES[distribution], alpha]
                    + [_with_ci(asym["mean"], asym["ci"]), _with_ci(curv["mean"], curv["ci"])]
                )
    out += _table(["run", "split", "direction", "alpha", "asymmetry", "curvature"], rows)
    out += ["", "## Trace of the Hessian w.r.t. the input embeddings (Hutchinson)", ""]
    rows = [
        [label, split, _with_ci(result["hessian_trace"]["estimate"], result["hessian_trace"]["ci"]),
         str(result["hessian_trace"]["probes"])]
        for label, split, result in (item for run in runs for item in _splits(run))
    ]  # fmt: skip
    out += _table(["run", "split", "trace", "probes"], rows)
    out += ["", "## Overfitting (NEFTune Sec. 5.1): loss with noise off", ""]
    rows = [
        [run["label"], run["method_label"], f"{run['alpha']:g}",
         _with_ci(run["losses"]["train"]["mean"], run["losses"]["train"]["ci"]),
         _with_ci(run["losses"]["heldout"]["mean"], run["losses"]["heldout"]["ci"]), _num(run["losses"]["gap"])]
        for run in runs
    ]  # fmt: skip
    out += _table(["run", "method", "alpha", "training loss", "held-out loss", "gap"], rows)
    return "\n".join(out) + "\n"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _error_bars(summaries: list[tuple[float, list[float]]]) -> list[list[float]]:
    """Matplotlib's ``yerr`` (distances below and above) from (value, interval) pairs."""
    below = [max(value - ci[0], 0.0) for value, ci in summaries]
    above = [max(ci[1] - value, 0.0) for value, ci in summaries]
    return [below, above]


def plot_variance(runs: list[dict[str, Any]], path: Path) -> Path:
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(max(4.5, 1.6 * len(runs) + 2), 3.6))
    width = 0.8 / len(SCHEMES)
    for k, scheme in enumerate(SCHEMES):
        values = [run["splits"]["train"]["gradients"]["variance"][scheme] for run in runs]
        xs = [i + (k - 1) * width for i in range(len(runs))]
        errors = _error_bars([(v["variance"], v["ci"]) for v in values])
        axis.bar(
            xs, [v["variance"] for v in values], width, yerr=errors, capsize=3, label=SCHEME_TITLES[scheme]
        )
    axis.set_xticks(range(len(runs)), [run["label"] for run in runs], rotation=20, ha="right")
    axis.set(
        ylabel="gradient variance (training examples)", title="variance across noise draws, equal compute"
    )
    axis.legend(fontsize=8)
    return write_figure_atomic(path, figure)


def plot_directions(runs: list[dict[str, Any]], path: Path) -> Path:
    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for run in runs:
        for distribution, by_alpha in run["splits"]["train"]["directions"].items():
            alphas = [m["alpha"] for m in by_alpha.values()]
            for axis, quantity in zip(axes, ("asymmetry", "curvature"), strict=True):
                means = [m[quantity]["mean"] for m in by_alpha.values()]
                errors = _error_bars([(m[quantity]["mean"], m[quantity]["ci"]) for m in by_alpha.values()])
                label = f"{run['label']} {DIRECTION_TITLES[distribution]}"
                axis.errorbar(alphas, means, yerr=errors, marker="o", capsize=3, label=label)
    axes[0].set(xlabel="alpha", ylabel="|L(x+e) - L(x-e)| / 2", title="first-order asymmetry")
    axes[1].set(xlabel="alpha", ylabel="L(x+e) + L(x-e) - 2 L(x)", title="curvature")
    axes[1].legend(fontsize=7)
    return write_figure_atomic(path, figure)


def plot_losses(runs: list[dict[str, Any]], path: Path) -> Path:
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(max(4.5, 1.4 * len(runs) + 2), 3.6))
    for k, split in enumerate(("train", "heldout")):
        values = [run["losses"][split] for run in runs]
        xs = [i + (k - 0.5) * 0.38 for i in range(len(runs))]
        errors = _error_bars([(v["mean"], v["ci"]) for v in values])
        axis.bar(xs, [v["mean"] for v in values], 0.38, yerr=errors, capsize=3, label=f"{split} (noise off)")
    axis.set_xticks(range(len(runs)), [run["label"] for run in runs], rotation=20, ha="right")
    axis.set(ylabel="loss", title="training vs held-out loss")
    axis.legend(fontsize=8)
    return write_figure_atomic(path, figure)


def write_analysis(analysis: dict[str, Any], out: Path) -> AnalysisFiles:
    """``analysis.json``, ``analysis.md`` and the three plots in ``out`` (created)."""
    out.mkdir(parents=True, exist_ok=True)
    runs = analysis["runs"]
    plots = (
        plot_variance(runs, out / VARIANCE_PLOT),
        plot_directions(runs, out / DIRECTIONS_PLOT),
        plot_losses(runs, out / LOSSES_PLOT),
    )
    return AnalysisFiles(
        json=write_json_atomic(out / JSON_FILE, analysis),
        markdown=write_text_atomic(out / MARKDOWN_FILE, markdown(analysis)),
        plots=plots,
    )
