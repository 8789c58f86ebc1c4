"""`symnoise report`: the papers' tables (markdown), plots against alpha (PNG) and a JSON summary of finished runs.

The runs are read by `symnoise.evaluation.runs` (its docstring says where each piece is looked for and how runs
are labelled) and laid out in tables by `symnoise.evaluation.tables`; with an expected-numbers file, the papers'
tables (`symnoise.evaluation.expected`) come first. The paired comparisons between methods
(`symnoise.evaluation.comparisons`: per seed over prompts, and over seeds) follow the tables. This module draws the
plots and writes every file, each atomically: ``report.md``, ``winrate_vs_alpha.png``, ``length_vs_alpha.png``,
``paired_differences.png`` (when there is a comparison) and, if asked, ``report.json``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from ..files import write_figure_atomic, write_json_atomic, write_text_atomic
from .comparisons import METRICS, Comparisons, build_comparisons
from .expected import ExpectedFile, comparison_tables
from .runs import Run, is_base, read_analysis
from .tables import (
    DASH,
    Table,
    build_tables,
    comparisons_per_seed_table,
    comparisons_table,
    dataset_order,
    dataset_title,
    pick,
    row_order,
    to_markdown,
)

MARKDOWN_FILE = "report.md"
JSON_FILE = "report.json"
WINRATE_PLOT = "winrate_vs_alpha.png"
LENGTH_PLOT = "length_vs_alpha.png"
PAIRED_PLOT = "paired_differences.png"


def plot_against_alpha(
    runs: Sequence[Run], value: Callable[[Run], float | None], ylabel: str, path: Path
) -> Path:
    """One panel per dataset, one line per method over alpha, the base run as a dashed level; a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen, _ = pick(runs, lambda r: r.variant, lambda r: 0.0)
    datasets = dataset_order(runs)
    figure, axes = plt.subplots(1, len(datasets), figsize=(4.5 * len(datasets), 3.6), squeeze=False)
    for axis, dataset in zip(axes[0], datasets, strict=True):
        _plot_panel(axis, [r for (_, d), r in chosen.items() if d == dataset and value(r) is not None], value)
        axis.set(title=dataset_title(dataset), xlabel="alpha", ylabel=ylabel)
    return write_figure_atomic(path, figure)


def _plot_panel(axis, runs: Sequence[Run], value: Callable[[Run], float | None]) -> None:
    if not runs:
        axis.text(0.5, 0.5, "no data", ha="center", va="center", transform=axis.transAxes)
        return
    for run in (r for r in runs if is_base(r.noise)):
        axis.axhline(value(run), color="gray", linestyle="--", label="base")
    for method in dict.fromkeys(r.method for r in sorted(runs, key=row_order) if not is_base(r.noise)):
        points = sorted((r.noise.alpha, value(r)) for r in runs if r.method == method)
        axis.plot([a for a, _ in points], [v for _, v in points], marker="o", label=method)
    axis.legend(fontsize="small")


def plot_paired_differences(comparisons: Comparisons, path: Path) -> Path | None:
    """One panel per metric, one line per comparison: the difference B − A as a point with its 95% interval
    (over seeds where defined, else over prompts), a vertical line at 0; a PNG at ``path``, None without data."""
    shown = [c for c in comparisons.rows if c.headline[0] is not None]
    if not shown:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in METRICS if any(c.metric == m for c in shown)]
    heights = [sum(c.metric == m for c in shown) for m in metrics]
    figure, axes = plt.subplots(
        len(metrics), 1, figsize=(8, 1.2 + 0.45 * sum(heights) + 0.6 * len(metrics)), squeeze=False,
        gridspec_kw={"height_ratios": heights},
    )  # fmt: skip
    for axis, metric in zip(axes[:, 0], metrics, strict=True):
        rows = [c for c in shown if c.metric == metric]
        for y, row in enumerate(rows):
            difference, low, high, basis = row.headline
            color = "tab:blue" if basis.startswith("seeds") else "tab:orange"
            if low is not None:
                axis.plot([low, high], [y, y], color=color, linewidth=2)
            axis.plot([difference], [y], "o", color=color)
        axis.axvline(0, color="gray", linestyle="--")
        axis.set_yticks(range(len(rows)), [f"{c.name} ({dataset_title(c.dataset)})" for c in rows])
        axis.set_ylim(len(rows) - 0.5, -0.5)
        axis.set_xlabel(f"B − A: {METRICS[metric]} (95% interval; blue over seeds, orange over prompts)")
    return write_figure_atomic(path, figure)


@dataclass(frozen=True)
class ReportFiles:
    markdown: Path
    plots: list[Path]
    json: Path | None


def _with_interval(value: float | None, interval: Sequence[float] | None, digits: int) -> str:
    if value is None:
        return DASH
    if not interval:
        return f"{value:.{digits}g}"
    return f"{value:.{digits}g} [{interval[0]:.{digits}g}, {interval[1]:.{digits}g}]"


def mechanism_table(runs: Sequence[Run]) -> Table | None:
    """What `symnoise analyze` measured at each analysed run's final model (training examples, noise off): the
    antithetic ratio (one SymNoise pair's gradient variance over two independent draws'), two draws over one,
    the Hutchinson trace of the input-embedding Hessian, and training against held-out loss; None when no run
    was analysed."""
    rows = []
    for run in runs:
        entry = read_analysis(run.path)
        if entry is None:
            continue
        train = entry["splits"]["train"]
        gradients = train["gradients"]
        hessian = train["hessian_trace"]
        losses = entry["losses"]
        rows.append(
            [
                run.name,
                run.variant,
                _with_interval(entry["antithetic_ratio"], entry.get("antithetic_ratio_ci"), 3),
                _with_interval(
                    gradients["variance"]["two_draws"]["variance"]
                    / gradients["variance"]["one_draw"]["variance"],
                    None,
                    3,
                ),
                _with_interval(hessian["estimate"], hessian["ci"], 3),
                _with_interval(losses["train"]["mean"], losses["train"]["ci"], 4),
                _with_interval(losses["heldout"]["mean"], losses["heldout"]["ci"], 4),
                f"{losses['gap']:+.4f}",
            ]
        )
    if not rows:
        return None
    return Table(
        "Mechanism (symnoise analyze, training examples, noise off)",
        ["run", "variant", "antithetic ratio", "two draws / one", "Hessian trace", "train loss", "held-out loss",
         "gap"],
        rows,
        keys=1,
        text_columns=2,
        notes=[
            "antithetic ratio: gradient variance across noise draws of one +-eps pair over that of two independent "
            "one-sided draws at the run's distribution and scale (equal compute); below 1 when the pair's "
            "cancellation of the first-order term lowers the variance. Intervals: 95% bootstrap.",
        ],
    )  # fmt: skip


def write_report(
    runs: Sequence[Run],
    out_dir: str | Path,
    json_summary: bool = False,
    expected: ExpectedFile | None = None,
    paired: Comparisons | None = None,
) -> ReportFiles:
    """Write ``report.md``, the plots and, if asked, ``report.json`` into ``out_dir``.

    ``report.json``'s ``paired_comparisons`` holds the comparisons between methods (rows, each with its seeds'
    paired differences over prompts and the statistics over seeds), and their markdown tables.

    ``expected``: the papers' tables, printed first with the reproduced numbers side by side. ``paired``: the
    comparisons between methods when already built (`build_comparisons` of the same runs), else built here.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = [
        plot_against_alpha(
            runs, lambda r: r.win_rate and r.win_rate.win_rate, "win rate (%)", out / WINRATE_PLOT
        ),
        plot_against_alpha(runs, lambda r: r.mean_chars, "mean length (chars)", out / LENGTH_PLOT),
    ]
    paired = paired if paired is not None else build_comparisons(runs)
    paired_plot = plot_paired_differences(paired, out / PAIRED_PLOT)
    plots += [paired_plot] if paired_plot else []
    tables, comparisons = build_tables(runs), []
    if expected is not None:
        paper_tables, comparisons = comparison_tables(expected, runs)
        tables = paper_tables + tables
    paired_tables = [
        t for t in (comparisons_table(paired), comparisons_per_seed_table(paired), mechanism_table(runs)) if t
    ]
    markdown = write_text_atomic(
        out / MARKDOWN_FILE, to_markdown(tables + paired_tables, [str(p) for p in plots])
    )
    summary = None
    if json_summary:
        summary = write_json_atomic(
            out / JSON_FILE,
            {
                "runs": [r.to_dict() for r in runs],
                "tables": [t.to_dict() for t in tables],
                "plots": [str(p) for p in plots],
                "comparisons": [asdict(c) for c in comparisons],
                "paired_comparisons": {
                    **paired.to_dict(),
                    "tables": [t.to_dict() for t in paired_tables],
                },
            },
        )
    return ReportFiles(markdown, plots, summary)
