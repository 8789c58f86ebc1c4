"""Collect finished runs into the papers' tables (markdown), plots against alpha (PNG) and a JSON summary.

Where each piece is looked for in a run directory ``RUN`` (the first file found wins; a missing piece is shown
as "–", never an error; a file that is there but unreadable is an error naming it):

========================  ==============================================================================
piece                     files, in the order tried (and the command that writes them)
========================  ==============================================================================
run (required)            ``RUN/symnoise_run.json``: noise config, model, dataset, format (``symnoise train``)
steps, final loss         ``RUN/train_summary.json`` (``symnoise train``, at the end of training); else the
                          last line with a ``loss`` in ``RUN/metrics.jsonl``
tokens/s                  ``RUN/metrics.jsonl``: the median of the logged ``tokens_per_s`` values (the median,
                          because the first logging interval also holds start-up time)
outputs (length stats)    ``RUN/model_outputs.json`` (the default ``--output`` of ``symnoise generate RUN``),
                          ``RUN/eval/model_outputs.json``
annotations (win rate)    ``RUN/eval/annotations.json`` (``symnoise judge ... --out RUN/eval``),
                          ``RUN/annotations.json`` (``--out RUN``),
                          ``RUN/model_outputs_judged/annotations.json`` (the default ``--out`` of
                          ``symnoise judge RUN/model_outputs.json``),
                          ``RUN/eval/model_outputs_judged/annotations.json`` (the same for
                          ``RUN/eval/model_outputs.json``)
leaderboard               ``RUN/eval/leaderboard.json``, ``RUN/leaderboard.json`` (``symnoise leaderboard RUN
                          --out FILE``; that command has no default file, so one of these names must be given)
========================  ==============================================================================

Win rates are those of :mod:`symnoise.evaluation.winrate` over the whole annotation file (which must hold a
single generator); lengths, 2-gram repetition and log-diversity those of :mod:`symnoise.evaluation.stats`, on the
first N words for the run's dataset (N = 50 for datasets the papers did not use), or on the first ``words`` words
for every dataset when ``words`` is given (``symnoise report --words N``, e.g. for short outputs of tiny models: with
no output of N words or more, repetition and log-diversity are blank, and a note under Table 5 says so).

Labels. The dataset is the run's data ``format`` when it is one of the papers' four (alpaca, evol-instruct,
sharegpt, openplatypus), else the stem of the data path. The method comes from the noise config: none -> "base",
uniform -> "NEFT", gaussian -> "Gaussian" (norm-matched, /sqrt3) or "Gaussian (unmatched)", bernoulli ->
"Bernoulli", symnoise -> "SymNoise" (unmatched Bernoulli and SymNoise get "(unmatched)" too; a symmetric pair on
another distribution gets "(symmetric)", one-sided SymNoise "(one-sided)"). Variants (Table 4) add alpha: "NEFT 5",
"Gaussian 5/sqrt3" (matched), "Gaussian 5" (unmatched, as in the paper), "Bernoulli 5", "SymNoise 5".

Tables. Table 1 (win rate, method x dataset) and Table 5 (length and repetition) show one run per method and
dataset: the one whose alpha is closest to the papers' alpha for that dataset (5 Alpaca and Evol-Instruct, 10
ShareGPT, 15 OpenPlatypus), the first given on a tie. Table 4 shows one run per variant and dataset (the first
given). Runs left out of a table are named in a note under it; every run is in the runs table, the plots and the
JSON summary. Noise options other than method, alpha, norm matching and symmetry (schedule, region, length mode)
are not part of the labels.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from symnoise.config import METHODS, NoiseConfig
from symnoise.evaluation.stats import (
    MIN_WORDS,
    WORDS_PER_DATASET,
    OutputsError,
    OutputStats,
    load_outputs,
    output_stats,
)
from symnoise.evaluation.winrate import AnnotationError, WinRate, load_annotations, win_rate

DASH = "–"
RUN_FILE = "symnoise_run.json"
TRAIN_SUMMARY_FILE = "train_summary.json"
METRICS_FILE = "metrics.jsonl"
OUTPUTS_FILES = ("model_outputs.json", "eval/model_outputs.json")
ANNOTATION_FILES = (
    "eval/annotations.json",
    "annotations.json",
    "model_outputs_judged/annotations.json",
    "eval/model_outputs_judged/annotations.json",
)
LEADERBOARD_FILES = ("eval/leaderboard.json", "leaderboard.json")

DATASETS = ("alpaca", "evol-instruct", "sharegpt", "openplatypus")
DATASET_TITLES = {
    "alpaca": "Alpaca",
    "evol-instruct": "Evol-Instruct",
    "sharegpt": "ShareGPT",
    "openplatypus": "OpenPlatypus",
}
PAPER_ALPHA = {"alpaca": 5.0, "evol-instruct": 5.0, "sharegpt": 10.0, "openplatypus": 15.0}
DEFAULT_ALPHA = 5.0
DEFAULT_WORDS = WORDS_PER_DATASET["alpaca"]
LEADERBOARD_COLUMNS = (("arc", "ARC"), ("hellaswag", "HellaSwag"), ("mmlu", "MMLU"))
METHOD_NAMES = {
    "none": "base",
    "uniform": "NEFT",
    "gaussian": "Gaussian",
    "bernoulli": "Bernoulli",
    "symnoise": "SymNoise",
}

MARKDOWN_FILE = "report.md"
JSON_FILE = "report.json"
WINRATE_PLOT = "winrate_vs_alpha.png"
LENGTH_PLOT = "length_vs_alpha.png"


class ReportError(ValueError):
    """A run directory or one of its files that cannot be used; the message names it."""


# ------------------------------------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class TrainMetrics:
    """What the report shows of training; None where the run directory does not say."""

    steps: int | None = None
    final_loss: float | None = None
    tokens_per_s: float | None = None


@dataclass(frozen=True)
class Run:
    """One run directory and everything found in it (see the module docstring for where)."""

    path: Path
    noise: NoiseConfig
    dataset: str
    model: str | None
    train: TrainMetrics
    win_rate: WinRate | None = None
    stats: OutputStats | None = None
    leaderboard: dict[str, float | None] | None = None
    files: dict[str, str | None] = field(default_factory=dict)
    words: int | None = (
        None  # N for repetition and log-diversity when set by ``--words``; None: the papers' N
    )

    @property
    def n_words(self) -> int:
        """The first-N-words length the repetition and log-diversity of this run are (or would be) computed on."""
        return self.words if self.words is not None else WORDS_PER_DATASET.get(self.dataset, DEFAULT_WORDS)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def method(self) -> str:
        return method_label(self.noise)

    @property
    def variant(self) -> str:
        return variant_label(self.noise)

    @property
    def mean_chars(self) -> float | None:
        """Mean response length in characters: from the outputs, else from the judged outputs (the same texts)."""
        if self.stats is not None:
            return self.stats.mean_chars
        return self.win_rate.avg_length if self.win_rate is not None else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "method": self.method,
            "variant": self.variant,
            "dataset": self.dataset,
            "model": self.model,
            "noise": self.noise.to_dict(),
            "files": dict(self.files),
            "train": asdict(self.train),
            "win_rate": self.win_rate and self.win_rate.to_dict(),
            "stats": self.stats and self.stats.to_dict(),
            "leaderboard": self.leaderboard,
        }


def _suffix(noise: NoiseConfig) -> str:
    """What sets a run apart from the paper's setting of its method, as a label suffix."""
    parts = []
    if noise.method in ("bernoulli", "symnoise") and not noise.match_uniform_norm:
        parts.append("(unmatched)")
    if noise.symmetric and noise.method != "symnoise":
        parts.append("(symmetric)")
    if not noise.symmetric and noise.method == "symnoise":
        parts.append("(one-sided)")
    return "".join(" " + p for p in parts)


def method_label(noise: NoiseConfig) -> str:
    """The row name of Tables 1 and 5: "base", "NEFT", "Gaussian", "Gaussian (unmatched)", "SymNoise", ..."""
    name = METHOD_NAMES[noise.method]
    if noise.method == "gaussian" and not noise.match_uniform_norm:
        name += " (unmatched)"
    return name + _suffix(noise)


def variant_label(noise: NoiseConfig) -> str:
    """The row name of Table 4, with alpha: "NEFT 5", "Gaussian 5/sqrt3", "Gaussian 5", "SymNoise 5", ..."""
    if noise.method == "none":
        return "base"
    alpha = f"{noise.alpha:g}"
    if noise.method == "gaussian" and noise.match_uniform_norm:
        alpha += "/sqrt3"
    return f"{METHOD_NAMES[noise.method]} {alpha}{_suffix(noise)}"


def dataset_label(run_info: dict[str, Any]) -> str:
    """The papers' dataset name from the run's data format, else the stem of its data path."""
    if run_info.get("format") in DATASETS:
        return run_info["format"]
    dataset = str(run_info.get("dataset") or "unknown")
    return Path(dataset.rstrip("/")).stem or dataset


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ReportError(f"{path}: cannot read it as JSON ({error})") from None


def _first_existing(run_dir: Path, names: Sequence[str]) -> Path | None:
    return next((run_dir / n for n in names if (run_dir / n).is_file()), None)


def read_run_info(run_dir: Path) -> tuple[dict[str, Any], NoiseConfig]:
    """``symnoise_run.json`` and its validated noise config; an error naming the directory when it is absent."""
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: not a directory")
    path = run_dir / RUN_FILE
    if not path.is_file():
        raise ReportError(f"{run_dir}: no {RUN_FILE}, so not a run directory written by `symnoise train`")
    info = _read_json(path)
    if not isinstance(info, dict) or not isinstance(info.get("noise"), dict):
        raise ReportError(f"{path}: expected an object with a 'noise' object")
    try:
        return info, NoiseConfig.from_dict(info["noise"])
    except (TypeError, ValueError) as error:
        raise ReportError(f"{path}: field 'noise': {error}") from None


def _metrics_lines(path: Path) -> list[dict[str, Any]]:
    lines = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ReportError(f"{path}: line {number}: not valid JSON ({error})") from None
    return lines


def read_train_metrics(run_dir: Path) -> TrainMetrics:
    """Steps and final loss from ``train_summary.json`` (else the last logged loss), tokens/s from the metrics."""
    summary = _read_json(run_dir / TRAIN_SUMMARY_FILE) if (run_dir / TRAIN_SUMMARY_FILE).is_file() else {}
    if not isinstance(summary, dict):
        raise ReportError(f"{run_dir / TRAIN_SUMMARY_FILE}: expected a JSON object")
    lines = _metrics_lines(run_dir / METRICS_FILE) if (run_dir / METRICS_FILE).is_file() else []
    logged = [line for line in lines if isinstance(line.get("loss"), (int, float))]
    rates = [line["tokens_per_s"] for line in lines if isinstance(line.get("tokens_per_s"), (int, float))]
    steps = summary.get("steps")
    loss = summary.get("final_loss")
    if steps is None and logged:
        steps = logged[-1].get("step")
    if loss is None and logged:
        loss = logged[-1]["loss"]
    return TrainMetrics(
        steps=steps, final_loss=loss, tokens_per_s=statistics.median(rates) if rates else None
    )


def read_win_rate(path: Path) -> WinRate:
    """AlpacaEval metrics over a whole annotation file, which must compare a single model with the reference."""
    try:
        annotations = load_annotations(path)
    except AnnotationError as error:
        raise ReportError(str(error)) from None
    generators = list(dict.fromkeys(a.generator for a in annotations))
    if len(generators) != 1:
        raise ReportError(
            f"{path}: a run's annotation file must hold one generator, found {len(generators)}: "
            f"{', '.join(generators[:5])}"
        )
    return win_rate(annotations, file=str(path), generator=generators[0])


def check_words(words: int | None) -> int | None:
    """``words`` (the ``--words`` override of N) if it is None or an integer of at least 5, else a ReportError."""
    if words is not None and (isinstance(words, bool) or not isinstance(words, int) or words < MIN_WORDS):
        raise ReportError(
            f"--words must be an integer of at least {MIN_WORDS} (4-grams need {MIN_WORDS} words), "
            f"got {words!r}"
        )
    return words


def read_output_stats(path: Path, dataset: str, words: int | None = None) -> OutputStats:
    """Length and repetition of an outputs file, on the first ``words`` words, else the papers' N for ``dataset``."""
    n_words = check_words(words) or WORDS_PER_DATASET.get(dataset, DEFAULT_WORDS)
    try:
        outputs, generators = load_outputs(path)
        return output_stats(outputs, n_words, str(path), generators)
    except (OutputsError, ValueError) as error:
        raise ReportError(str(error)) from None


def read_leaderboard(path: Path) -> dict[str, float | None]:
    """Scores (fractions) of ARC, HellaSwag and MMLU from a ``symnoise leaderboard --out`` report; None if absent."""
    report = _read_json(path)
    if not isinstance(report, dict) or not isinstance(report.get("tasks"), dict):
        raise ReportError(f"{path}: expected a `symnoise leaderboard` report with a 'tasks' object")
    scores = {}
    for task, _ in LEADERBOARD_COLUMNS:
        value = (
            report["tasks"].get(task, {}).get("value")
            if isinstance(report["tasks"].get(task), dict)
            else None
        )
        scores[task] = float(value) if isinstance(value, (int, float)) else None
    return scores


def load_run(run_dir: str | Path, words: int | None = None) -> Run:
    """Read one run directory: the run file is required, every other piece is optional.

    ``words``: N for repetition and log-diversity, for any dataset (default: the papers' N for the run's dataset).
    """
    check_words(words)
    run_dir = Path(run_dir)
    info, noise = read_run_info(run_dir)
    dataset = dataset_label(info)
    outputs = _first_existing(run_dir, OUTPUTS_FILES)
    annotations = _first_existing(run_dir, ANNOTATION_FILES)
    leaderboard = _first_existing(run_dir, LEADERBOARD_FILES)
    files = {"outputs": outputs, "annotations": annotations, "leaderboard": leaderboard}
    return Run(
        path=run_dir,
        noise=noise,
        dataset=dataset,
        model=info.get("model"),
        train=read_train_metrics(run_dir),
        win_rate=read_win_rate(annotations) if annotations else None,
        stats=read_output_stats(outputs, dataset, words) if outputs else None,
        leaderboard=read_leaderboard(leaderboard) if leaderboard else None,
        files={key: str(path) if path else None for key, path in files.items()},
        words=words,
    )


def load_runs(run_dirs: Sequence[str | Path], words: int | None = None) -> list[Run]:
    """Read every run directory (see :func:`load_run`); ``words`` overrides N for all of them."""
    check_words(words)
    if not run_dirs:
        raise ReportError("no run directories given")
    return [load_run(d, words) for d in run_dirs]


# ------------------------------------------------------------------------------------------------------ tables


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


def _title(dataset: str) -> str:
    return DATASET_TITLES.get(dataset, dataset)


def _row_order(run: Run) -> tuple:
    noise = run.noise
    return (METHODS.index(noise.method), not noise.match_uniform_norm, _suffix(noise), noise.alpha)


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


def _distance_to_paper_alpha(run: Run) -> float:
    return (
        0.0
        if run.noise.method == "none"
        else abs(run.noise.alpha - PAPER_ALPHA.get(run.dataset, DEFAULT_ALPHA))
    )


def _rows_labels(chosen: dict, label: Callable[[Run], str]) -> list[str]:
    runs = sorted(chosen.values(), key=_row_order)
    return list(dict.fromkeys(label(r) for r in runs))


def _left_out_note(left_out: Sequence[Run], why: str) -> list[str]:
    if not left_out:
        return []
    return [f"not shown ({why}): " + ", ".join(f"{r.path} ({r.variant}, {r.dataset})" for r in left_out)]


def _method_row(run_method: str) -> str:
    return run_method if run_method == "base" else "+" + run_method


def table_1(runs: Sequence[Run]) -> Table:
    """Win rate, method x dataset, at the papers' alpha (SymNoise Table 1)."""
    chosen, left_out = pick(runs, lambda r: r.method, _distance_to_paper_alpha)
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
        ["method"] + [_title(d) for d in datasets],
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
        ["variant"] + [_title(d) for d in datasets],
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
    chosen, left_out = pick(runs, lambda r: r.method, _distance_to_paper_alpha)
    datasets = dataset_order(runs)
    methods = _rows_labels(chosen, lambda r: r.method)
    rows = []
    for name, get, digits in STATS_METRICS:
        for method in methods:
            stats = [getattr(chosen.get((method, d)), "stats", None) for d in datasets]
            rows.append([name, _method_row(method)] + [_fmt(get(s) if s else None, digits) for s in stats])
    return Table(
        "Table 5: length and repetition of the outputs",
        ["metric", "method"] + [_title(d) for d in datasets],
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

    words = ", ".join(f"{_title(d)} {n_words(d)}" for d in datasets)
    note = f"repetition and log-diversity on the first N words: {words}"
    if any(r.words is not None for r in runs):
        papers = ", ".join(f"{_title(d)} {WORDS_PER_DATASET.get(d, DEFAULT_WORDS)}" for d in datasets)
        note += f" (set by --words; the papers' N: {papers})"
    return note


def _too_short_note(shown: Sequence[Run]) -> list[str]:
    """Runs in the table whose outputs are there but none of at least N words: why their repetition cells are blank."""
    short = [r for r in shown if r.stats is not None and r.stats.n_kept == 0]
    if not short:
        return []
    runs = ", ".join(
        f"{r.path} ({_title(r.dataset)}: N {r.stats.words}, {r.stats.n_responses} outputs of "
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
        key=lambda r: (datasets.index(r.dataset), _row_order(r)),
    )
    if not scored:
        return None
    rows = []
    for run in scored:
        values = [run.leaderboard[task] for task, _ in LEADERBOARD_COLUMNS]
        average = None if None in values else sum(values) / len(values)
        rows.append(
            [_title(run.dataset), run.variant, run.name]
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
                _title(run.dataset),
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
    parts = ["# symnoise report", ""] + [t.to_markdown() + "\n" for t in tables]
    parts += ["## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
    return "\n".join(parts) + "\n"


# ------------------------------------------------------------------------------------------------------- plots


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
        axis.set(title=_title(dataset), xlabel="alpha", ylabel=ylabel)
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=100)
    plt.close(figure)
    return path


def _plot_panel(axis, runs: Sequence[Run], value: Callable[[Run], float | None]) -> None:
    if not runs:
        axis.text(0.5, 0.5, "no data", ha="center", va="center", transform=axis.transAxes)
        return
    for run in (r for r in runs if r.noise.method == "none"):
        axis.axhline(value(run), color="gray", linestyle="--", label="base")
    for method in dict.fromkeys(r.method for r in sorted(runs, key=_row_order) if r.noise.method != "none"):
        points = sorted((r.noise.alpha, value(r)) for r in runs if r.method == method)
        axis.plot([a for a, _ in points], [v for _, v in points], marker="o", label=method)
    axis.legend(fontsize="small")


# ------------------------------------------------------------------------------------------------------ report


@dataclass(frozen=True)
class ReportFiles:
    markdown: Path
    plots: list[Path]
    json: Path | None


def write_report(
    runs: Sequence[Run], out_dir: str | Path, json_summary: bool = False, expected: Any = None
) -> ReportFiles:
    """Write ``report.md``, the two plots and, if asked, ``report.json`` into ``out_dir``.

    ``expected`` (a :class:`symnoise.evaluation.expected.ExpectedFile`): the papers' tables, printed first with the
    reproduced numbers side by side.
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
        from .expected import comparison_tables

        paper_tables, comparisons = comparison_tables(expected, runs)
        tables = paper_tables + tables
    markdown = out / MARKDOWN_FILE
    markdown.write_text(to_markdown(tables, [str(p) for p in plots]), encoding="utf-8")
    summary = None
    if json_summary:
        summary = out / JSON_FILE
        data = {
            "runs": [r.to_dict() for r in runs],
            "tables": [t.to_dict() for t in tables],
            "plots": [str(p) for p in plots],
            "comparisons": [asdict(c) for c in comparisons],
        }
        summary.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return ReportFiles(markdown, plots, summary)
