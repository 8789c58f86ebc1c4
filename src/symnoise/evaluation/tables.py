"""The papers' tables, built from runs (`symnoise.evaluation.runs`): markdown `Table` objects, one per table.

Table 1 (win rate, method x dataset) and Table 5 (length and repetition) show one run per method and dataset: the
one whose alpha is closest to the papers' alpha for that dataset (5 Alpaca and Evol-Instruct, 10 ShareGPT, 15
OpenPlatypus), the first given on a tie. Table 4 shows one run per variant and dataset (the first given). Runs left
out of a table are named in a note under it; every run is in the runs table, the plots and the JSON summary.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..methods import METHODS
from .comparisons import METRICS, Comparisons
from .runs import (
    DATASETS,
    DEFAULT_WORDS,
    LEADERBOARD_COLUMNS,
    Run,
    distance_to_paper_alpha,
    label_suffix,
)
from .stats import WORDS_PER_DATASET, OutputStats

DASH = "–"
DATASET_TITLES = {
    "alpaca": "Alpaca",
    "evol-instruct": "Evol-Instruct",
    "sharegpt": "ShareGPT",
    "openplatypus": "OpenPlatypus",
}


@dataclass
class Table:
    """A markdown table: ``keys`` leading label columns, then one column per dataset (or score)."""

    title: str
    header: list[str]
    rows: list[list[str]]
    keys: int = 1
    notes: list[str] = field(default_factory=list)
    text_columns: int | None = None  # left-aligned leading columns; default: the label columns

    def cell(self, *labels: str, column: str) -> str:
        """The cell in the row with these leading labels and the named column."""
        index = self.header.index(column)
        for row in self.rows:
            if tuple(row[: self.keys]) == labels:
                return row[index]
        raise KeyError(f"{self.title}: no row {labels}")

    def to_markdown(self) -> str:
        left = self.keys if self.text_columns is None else self.text_columns
        lines = [
            f"## {self.title}",
            "",
            "| " + " | ".join(self.header) + " |",
            "|" + "|".join("---" if i < left else "---:" for i in range(len(self.header))) + "|",
        ]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines + ([""] + [f"Note: {n}" for n in self.notes] if self.notes else []))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fmt(value: float | None, digits: int) -> str:
    return DASH if value is None else f"{value:.{digits}f}"


def dataset_order(runs: Sequence[Run]) -> list[str]:
    """The papers' four datasets in their order, then any other in order of appearance."""
    present = list(dict.fromkeys(r.dataset for r in runs))
    return [d for d in DATASETS if d in present] + [d for d in present if d not in DATASETS]


def dataset_title(dataset: str) -> str:
    """The column title of a dataset: the papers' spelling ("Evol-Instruct"), else the label itself."""
    return DATASET_TITLES.get(dataset, dataset)


def row_order(run: Run) -> tuple:
    """Rows in the method table's order, matched before unmatched, then by suffix and alpha."""
    noise = run.noise
    return (METHODS.index(noise.method), not noise.match_uniform_norm, label_suffix(noise), noise.alpha)


def pick(
    runs: Sequence[Run], label: Callable[[Run], str], prefer: Callable[[Run], float]
) -> tuple[dict, list]:
    """One run per (label, dataset): the lowest ``prefer`` value, the first given on a tie; and the runs left out."""
    chosen: dict[tuple[str, str], Run] = {}
    for run in runs:
        key = (label(run), run.dataset)
        if key not in chosen or prefer(run) < prefer(chosen[key]):
            chosen[key] = run
    kept = {id(r) for r in chosen.values()}
    left_out = [r for r in runs if id(r) not in kept]
    return chosen, left_out


def _rows_labels(chosen: dict, label: Callable[[Run], str]) -> list[str]:
    runs = sorted(chosen.values(), key=row_order)
    return list(dict.fromkeys(label(r) for r in runs))


def _left_out_note(left_out: Sequence[Run], why: str) -> list[str]:
    if not left_out:
        return []
    return [f"not shown ({why}): " + ", ".join(f"{r.path} ({r.variant}, {r.dataset})" for r in left_out)]


def _method_row(run_method: str) -> str:
    return run_method if run_method == "base" else "+" + run_method


def table_1(runs: Sequence[Run]) -> Table:
    """Win rate, method x dataset, at the papers' alpha (SymNoise Table 1)."""
    chosen, left_out = pick(runs, lambda r: r.method, distance_to_paper_alpha)
    datasets = dataset_order(runs)
    rows = []
    for method in _rows_labels(chosen, lambda r: r.method):
        cells = [chosen.get((method, d)) for d in datasets]
        rows.append(
            [_method_row(method)]
            + [_fmt(r.win_rate.win_rate if r and r.win_rate else None, 2) for r in cells]
        )
    return Table(
        "Table 1: AlpacaEval win rate (%)",
        ["method"] + [dataset_title(d) for d in datasets],
        rows,
        notes=_left_out_note(left_out, "another run of the method is closer to the papers' alpha"),
    )


def _win_rate_and_length(run: Run | None) -> str:
    if run is None or run.win_rate is None or run.win_rate.win_rate is None:
        return DASH
    return f"{run.win_rate.win_rate:.2f} ({_fmt(run.mean_chars, 0)})"


def table_4(runs: Sequence[Run]) -> Table:
    """Win rate and mean length in characters per noise variant (alpha, norm matching) and dataset."""
    chosen, left_out = pick(runs, lambda r: r.variant, lambda r: 0.0)
    datasets = dataset_order(runs)
    rows = [
        [variant] + [_win_rate_and_length(chosen.get((variant, d))) for d in datasets]
        for variant in _rows_labels(chosen, lambda r: r.variant)
    ]
    return Table(
        "Table 4: win rate % (mean response length in characters) per noise variant",
        ["variant"] + [dataset_title(d) for d in datasets],
        rows,
        notes=_left_out_note(left_out, "an earlier run has the same variant and dataset"),
    )


STATS_METRICS: tuple[tuple[str, Callable[[OutputStats], float | None], int], ...] = (
    ("mean chars", lambda s: s.mean_chars, 1),
    ("mean words", lambda s: s.mean_words, 1),
    ("2-gram rep. %", lambda s: s.rep_2_pct, 2),
    ("log-diversity", lambda s: s.log_diversity, 2),
)


def table_5(runs: Sequence[Run]) -> Table:
    """Length, 2-gram repetition and log-diversity of the outputs, metric x method x dataset (NEFTune Table 4)."""
    chosen, left_out = pick(runs, lambda r: r.method, distance_to_paper_alpha)
    datasets = dataset_order(runs)
    methods = _rows_labels(chosen, lambda r: r.method)
    rows = []
    for name, get, digits in STATS_METRICS:
        for method in methods:
            stats = [getattr(chosen.get((method, d)), "stats", None) for d in datasets]
            rows.append([name, _method_row(method)] + [_fmt(get(s) if s else None, digits) for s in stats])
    return Table(
        "Table 5: length and repetition of the outputs",
        ["metric", "method"] + [dataset_title(d) for d in datasets],
        rows,
        keys=2,
        notes=[_words_note(runs, datasets)]
        + _too_short_note(chosen.values())
        + _left_out_note(left_out, "another run of the method is closer to the papers' alpha"),
    )


def _words_note(runs: Sequence[Run], datasets: Sequence[str]) -> str:
    """The N of each dataset; where ``--words`` set it, the papers' N too."""

    def n_words(dataset: str) -> str:
        values = dict.fromkeys(r.n_words for r in runs if r.dataset == dataset)
        return "/".join(str(n) for n in values)

    words = ", ".join(f"{dataset_title(d)} {n_words(d)}" for d in datasets)
    note = f"repetition and log-diversity on the first N words: {words}"
    if any(r.words is not None for r in runs):
        papers = ", ".join(f"{dataset_title(d)} {WORDS_PER_DATASET.get(d, DEFAULT_WORDS)}" for d in datasets)
        note += f" (set by --words; the papers' N: {papers})"
    return note


def _too_short_note(shown: Sequence[Run]) -> list[str]:
    """Runs in the table whose outputs are there but none of at least N words: why their repetition cells are blank."""
    short = [r for r in shown if r.stats is not None and r.stats.n_kept == 0]
    if not short:
        return []
    runs = ", ".join(
        f"{r.path} ({dataset_title(r.dataset)}: N {r.stats.words}, {r.stats.n_responses} outputs of "
        f"{r.stats.mean_words:.1f} words on average)"
        for r in short
    )
    return [
        f"no output is at least N words long, so 2-gram repetition and log-diversity are blank, in: {runs}; "
        "`symnoise report --words N` sets a smaller N for every dataset (e.g. --words 20 for short outputs)"
    ]


def leaderboard_table(runs: Sequence[Run]) -> Table | None:
    """Open LLM Leaderboard scores (%) per run that has them; the average only when all three are there."""
    datasets = dataset_order(runs)
    scored = sorted(
        (r for r in runs if r.leaderboard is not None),
        key=lambda r: (datasets.index(r.dataset), row_order(r)),
    )
    if not scored:
        return None
    rows = []
    for run in scored:
        values = [run.leaderboard[task] for task, _ in LEADERBOARD_COLUMNS]
        average = None if None in values else sum(values) / len(values)
        rows.append(
            [dataset_title(run.dataset), run.variant, run.name]
            + [_fmt(v * 100 if v is not None else None, 2) for v in values + [average]]
        )
    return Table(
        "Open LLM Leaderboard (%)",
        ["dataset", "variant", "run"] + [title for _, title in LEADERBOARD_COLUMNS] + ["average"],
        rows,
        keys=3,
    )


def runs_table(runs: Sequence[Run]) -> Table:
    """Every run: its labels, the training numbers, and which evaluation pieces were found."""
    rows = []
    for run in runs:
        found = [key for key in ("annotations", "outputs", "leaderboard") if run.files.get(key)]
        t = run.train
        rows.append(
            [
                run.name,
                run.variant,
                dataset_title(run.dataset),
                run.model or DASH,
                ", ".join(found) or DASH,
                DASH if t.steps is None else str(t.steps),
                _fmt(t.final_loss, 4),
                _fmt(t.tokens_per_s, 1),
            ]
        )
    return Table(
        "Runs",
        ["run", "variant", "dataset", "model", "found", "steps", "final loss", "tokens/s"],
        rows,
        keys=1,
        text_columns=5,
    )


def build_tables(runs: Sequence[Run]) -> list[Table]:
    """All tables of the report, in the order they are written; the leaderboard table only when there are scores."""
    tables = [table_1(runs), table_4(runs), table_5(runs), leaderboard_table(runs), runs_table(runs)]
    return [t for t in tables if t is not None]


def to_markdown(tables: Sequence[Table], plots: Sequence[str]) -> str:
    """The whole report: every table, then the plots as images beside the markdown file."""
    parts = ["# symnoise report", ""] + [t.to_markdown() + "\n" for t in tables]
    parts += ["## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
    return "\n".join(parts) + "\n"


# ------------------------------------------------------------------------------------------------ comparisons

METRIC_DIGITS = {"win_rate": 2, "reference_loss": 4, "length_chars": 1, "repetition_2gram": 2}


def _signed(value: float | None, digits: int) -> str:
    return DASH if value is None else f"{value:+.{digits}f}"


def _interval(low: float | None, high: float | None, digits: int) -> str:
    return DASH if low is None else f"[{low:+.{digits}f}, {high:+.{digits}f}]"


def mean_and_interval(summary, digits: int) -> str:
    """ "mean ± half-width of the 95% t-interval (n)", or "mean (1 seed)" where the interval is undefined."""
    if summary is None:
        return DASH
    if summary.ci_low is None:
        return f"{summary.mean:.{digits}f} (1 seed)"
    return f"{summary.mean:.{digits}f} ± {(summary.ci_high - summary.ci_low) / 2:.{digits}f} ({summary.n})"


def comparisons_table(comparisons: Comparisons) -> Table | None:
    """One row per comparison and metric (`symnoise.evaluation.comparisons.Comparisons`): each method over seeds,
    the difference B − A and its 95% interval (over seeds where defined, else over prompts) and the verdict."""
    if not comparisons.rows:
        return None
    rows = []
    for c in comparisons.rows:
        digits = METRIC_DIGITS[c.metric]
        difference, low, high, basis = c.headline
        rows.append(
            [dataset_title(c.dataset), c.name, METRICS[c.metric], ", ".join(_seed_name(s) for s in c.seeds)
             or DASH, mean_and_interval(c.a_over_seeds, digits), mean_and_interval(c.b_over_seeds, digits),
             _signed(difference, digits), _interval(low, high, digits), basis, c.verdict]
        )  # fmt: skip
    notes = [
        "A and B: each method's mean over seeds ± half-width of its 95% t-interval (number of seeds); B − A: the "
        "difference of those means, its 95% interval paired by seed (Welch's where the seeds differ), or over "
        "prompts (paired t) where there is one seed, which does not cover seed-to-seed variation"
    ]
    if any(c.metric == "reference_loss" for c in comparisons.rows):
        notes.append(
            "held-out ref. loss here: each prompt's mean token loss, averaged over prompts (every prompt weighs the "
            "same), so it differs a little from the loss over all reference tokens together"
        )
    notes += [
        f"{dataset_title(c.dataset)}, {c.name}, {METRICS[c.metric]}: {n}"
        for c in comparisons.rows
        for n in c.notes
    ]
    return Table(
        "Comparisons",
        [
            "dataset",
            "comparison (B − A)",
            "metric",
            "seeds",
            "A",
            "B",
            "B − A",
            "95% interval",
            "over",
            "verdict",
        ],
        rows,
        keys=3,
        text_columns=4,
        notes=notes + list(comparisons.notes),
    )


def comparisons_per_seed_table(comparisons: Comparisons) -> Table | None:
    """The paired differences over prompts, one row per comparison, metric and seed; None when no comparison has
    more than one seed (the comparisons table then shows them already)."""
    if all(len(c.per_seed) < 2 for c in comparisons.rows):
        return None
    rows = []
    for c in comparisons.rows:
        digits = METRIC_DIGITS[c.metric]
        for s in c.per_seed:
            p = s.paired
            rows.append(
                [dataset_title(c.dataset), c.name, METRICS[c.metric], _seed_name(s.seed), str(p.n),
                 _fmt(p.a, digits), _fmt(p.b, digits), _signed(p.difference, digits),
                 _interval(p.ci_low, p.ci_high, digits), s.verdict]
            )  # fmt: skip
    return Table(
        "Comparisons per seed (paired over prompts)",
        [
            "dataset",
            "comparison (B − A)",
            "metric",
            "seed",
            "prompts",
            "A",
            "B",
            "B − A",
            "95% interval",
            "verdict",
        ],
        rows,
        keys=4,
        text_columns=4,
    )


def _seed_name(seed: int | None) -> str:
    return "?" if seed is None else str(seed)
