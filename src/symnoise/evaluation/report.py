"""`symnoise report`: the papers' tables (markdown), plots against alpha (PNG) and a JSON summary of finished runs.

The runs are read by `symnoise.evaluation.runs` (its docstring says where each piece is looked for and how runs
are labelled) and laid out in tables by `symnoise.evaluation.tables`; with an expected-numbers file, the papers'
tables (`symnoise.evaluation.expected`) come first. This module draws the plots and writes every file, each
atomically: ``report.md``, ``winrate_vs_alpha.png``, ``length_vs_alpha.png`` and, if asked, ``report.json``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from ..files import write_atomic, write_json_atomic, write_text_atomic
from .expected import ExpectedFile, comparison_tables
from .runs import Run, is_base
from .tables import build_tables, dataset_order, dataset_title, pick, row_order, to_markdown

MARKDOWN_FILE = "report.md"
JSON_FILE = "report.json"
WINRATE_PLOT = "winrate_vs_alpha.png"
LENGTH_PLOT = "length_vs_alpha.png"


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
    figure.tight_layout()
    write_atomic(path, lambda tmp: figure.savefig(tmp, format="png", dpi=100))
    plt.close(figure)
    return path


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


@dataclass(frozen=True)
class ReportFiles:
    markdown: Path
    plots: list[Path]
    json: Path | None


def write_report(
    runs: Sequence[Run], out_dir: str | Path, json_summary: bool = False, expected: ExpectedFile | None = None
) -> ReportFiles:
    """Write ``report.md``, the two plots and, if asked, ``report.json`` into ``out_dir``.

    ``expected``: the papers' tables, printed first with the reproduced numbers side by side.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = [
        plot_against_alpha(
            runs, lambda r: r.win_rate and r.win_rate.win_rate, "win rate (%)", out / WINRATE_PLOT
        ),
        plot_against_alpha(runs, lambda r: r.mean_chars, "mean length (chars)", out / LENGTH_PLOT),
    ]
    tables, comparisons = build_tables(runs), []
    if expected is not None:
        paper_tables, comparisons = comparison_tables(expected, runs)
        tables = paper_tables + tables
    markdown = write_text_atomic(out / MARKDOWN_FILE, to_markdown(tables, [str(p) for p in plots]))
    summary = None
    if json_summary:
        summary = write_json_atomic(
            out / JSON_FILE,
            {
                "runs": [r.to_dict() for r in runs],
                "tables": [t.to_dict() for t in tables],
                "plots": [str(p) for p in plots],
                "comparisons": [asdict(c) for c in comparisons],
            },
        )
    return ReportFiles(markdown, plots, summary)
