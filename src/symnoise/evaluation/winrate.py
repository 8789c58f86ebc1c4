"""AlpacaEval win rates from judge annotation files, with the alpaca_eval package's metric definitions.

An annotation file is a JSON list of dicts; each compares the reference ``output_1`` with the model's
``output_2`` (generator ``generator_2``) on one ``instruction`` of one ``dataset`` subset. ``preference``:

* 1 = the reference wins, 2 = the model wins;
* 0 or 1.5 = a draw (the published AlpacaEval 1 files use 0; newer alpaca_eval versions write 1.5);
* any other number in [1, 2] = a weighted preference (as written by AlpacaEval 2's weighted judges);
* null (or NaN) = the judge's answer could not be parsed; the row counts in no metric except ``avg_length``.

Metrics (those of ``alpaca_eval.metrics.get_winrate``, absolute scoring rule), with ``q = preference - 1``
over the non-null rows and draws mapped to ``q = 0.5``:

* ``win_rate`` = 100 * mean(q), i.e. 100 * (wins + draws / 2) / n_total for discrete preferences;
* ``standard_error`` = 100 * sample standard deviation of q (ddof = 1) / sqrt(n_total);
* ``n_wins`` = #(q > 0.5), ``n_wins_base`` = #(q < 0.5), ``n_draws`` = #(preference in {0, 1.5}),
  ``n_total`` = number of non-null rows;
* ``discrete_win_rate`` = the same win rate after rounding each q to 0, 0.5 or 1 (equal for discrete files);
* ``n_null`` = number of null rows (no verdict), which the win rate leaves out;
* ``avg_length`` = mean character length of ``output_2`` over all rows, null preferences included (the leaderboard
  CSVs store it truncated to an integer).

These reproduce the published AlpacaEval 1 GPT-4 leaderboard rows from the published annotation files.

`symnoise judge` writes its ``metrics.json`` beside its ``annotations.json``; a file read here that holds those
metrics (recognised by its content, :func:`is_judge_metrics`) is not annotations, and :func:`win_rates` can skip it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from symnoise.files import read_json

DRAW_VALUES = (0, 1.5)
# The fields of the metrics.json that `symnoise judge` writes (symnoise.evaluation.judge.judge_metrics and the
# judge's names); a JSON object with all of them is that file.
JUDGE_METRICS_FIELDS = (
    "annotator",
    "judge",
    "win_rate",
    "standard_error",
    "n_wins",
    "n_wins_base",
    "n_draws",
    "n_total",
    "n_null",
)


class AnnotationError(ValueError):
    """An annotation file that cannot be read as AlpacaEval annotations; the message names file, row and field."""


class JudgeMetricsFile(AnnotationError):
    """The file is the metrics.json `symnoise judge` writes beside its annotations, not annotations."""


def is_judge_metrics(data: Any) -> bool:
    """Whether parsed JSON is a `symnoise judge` metrics.json: an object with every judge metric field."""
    return isinstance(data, dict) and all(field in data for field in JUDGE_METRICS_FIELDS)


@dataclass(frozen=True)
class Annotation:
    """The fields of one annotation that the metrics need; ``preference`` is None when unparsable."""

    generator: str
    dataset: str | None
    preference: float | None
    output_length: int


@dataclass(frozen=True)
class WinRate:
    """AlpacaEval head-to-head metrics of one generator (optionally one subset) against the reference."""

    file: str
    generator: str
    dataset: str | None
    win_rate: float | None
    standard_error: float | None
    n_wins: int
    n_wins_base: int
    n_draws: int
    n_total: int
    discrete_win_rate: float | None
    avg_length: float
    n_null: int = 0  # rows with no verdict, left out of every metric but avg_length
    length_controlled_winrate: float | None = None  # filled by symnoise.evaluation.length_control when asked
    lc_standard_error: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_preference(value: Any, where: str) -> float | None:
    """Validate one ``preference`` value; returns None for unparsable (null/NaN), the number otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AnnotationError(f"{where}: field 'preference': expected a number or null, got {value!r}")
    if math.isnan(value):
        return None
    if value == 0 or 1 <= value <= 2:
        return float(value)
    raise AnnotationError(
        f"{where}: field 'preference': {value!r} is out of range (expected null, 0, or a number in [1, 2])"
    )


def _text_field(row: dict, field: str, where: str) -> str:
    if field not in row:
        raise AnnotationError(f"{where}: missing field '{field}'")
    if not isinstance(row[field], str):
        raise AnnotationError(f"{where}: field '{field}': expected a string, got {type(row[field]).__name__}")
    return row[field]


def parse_annotation(row: Any, where: str, need_dataset: bool = False) -> Annotation:
    """Validate one annotation dict and keep what the metrics need."""
    if not isinstance(row, dict):
        raise AnnotationError(f"{where}: expected an object, got {type(row).__name__}")
    if "preference" not in row:
        raise AnnotationError(f"{where}: missing field 'preference'")
    preference = parse_preference(row["preference"], where)
    output = _text_field(row, "output_2", where)
    generator = _text_field(row, "generator_2", where)
    dataset = _text_field(row, "dataset", where) if need_dataset else row.get("dataset")
    return Annotation(generator, dataset if isinstance(dataset, str) else None, preference, len(output))


def load_annotations(path: str | Path, need_dataset: bool = False) -> list[Annotation]:
    """Read and validate one AlpacaEval annotation file (a JSON list of annotation dicts)."""
    path = Path(path)
    data = read_json(path, error=AnnotationError)
    if is_judge_metrics(data):
        raise JudgeMetricsFile(
            f"{path}: the win rate and counts that `symnoise judge` writes, not annotations"
        )
    if not isinstance(data, list):
        raise AnnotationError(f"{path}: expected a JSON list of annotations, got {type(data).__name__}")
    return [parse_annotation(row, f"{path}: row {i}", need_dataset) for i, row in enumerate(data)]


def score(preference: float) -> float:
    """q in [0, 1]: 0 = reference wins, 1 = model wins, 0.5 = draw."""
    return 0.5 if preference in DRAW_VALUES else preference - 1


def _discrete(q: float) -> float:
    return 0.5 if q == 0.5 else float(q > 0.5)


def _sem(values: Sequence[float]) -> float | None:
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    return math.sqrt(variance / n)


def head_to_head(preferences: Iterable[float | None]) -> dict[str, Any]:
    """The win-rate metrics of a sequence of validated preferences (None = unparsable, dropped)."""
    preferences = list(preferences)
    q = [score(p) for p in preferences if p is not None]
    n = len(q)
    sem = _sem(q)
    return dict(
        win_rate=100 * sum(q) / n if n else None,
        standard_error=100 * sem if sem is not None else None,
        n_wins=sum(v > 0.5 for v in q),
        n_wins_base=sum(v < 0.5 for v in q),
        n_draws=sum(p in DRAW_VALUES for p in preferences if p is not None),
        n_total=n,
        discrete_win_rate=100 * sum(_discrete(v) for v in q) / n if n else None,
    )


def win_rate(annotations: Sequence[Annotation], file: str = "", generator: str = "", dataset=None) -> WinRate:
    """Metrics of one group of annotations (one generator, or one generator on one subset)."""
    lengths = [a.output_length for a in annotations]
    return WinRate(
        file=file,
        generator=generator,
        dataset=dataset,
        avg_length=sum(lengths) / len(lengths) if lengths else 0.0,
        n_null=sum(a.preference is None for a in annotations),
        **head_to_head(a.preference for a in annotations),
    )


def group_annotations(annotations: Sequence[Annotation], by_dataset: bool) -> dict[tuple, list[Annotation]]:
    """Group by generator (and subset), in order of first appearance, subsets sorted by name within a generator."""
    groups: dict[tuple, list[Annotation]] = {}
    for a in annotations:
        groups.setdefault((a.generator, a.dataset if by_dataset else None), []).append(a)
    order = list(dict.fromkeys(g for g, _ in groups))
    return {key: groups[key] for key in sorted(groups, key=lambda k: (order.index(k[0]), k[1] or ""))}


def win_rates(
    paths: Sequence[str | Path],
    by_dataset: bool = False,
    skip_judge_metrics: Callable[[str], None] | None = None,
) -> list[WinRate]:
    """One row per (file, generator[, subset]) over several annotation files.

    A `symnoise judge` metrics.json among ``paths`` (as ``RUN/model_outputs_judged/*.json`` names) is an error,
    or, with ``skip_judge_metrics``, is left out and that function is called with why."""
    rows = []
    for path in paths:
        try:
            annotations = load_annotations(path, need_dataset=by_dataset)
        except JudgeMetricsFile as skipped:
            if skip_judge_metrics is None:
                raise
            skip_judge_metrics(str(skipped))
            continue
        for (generator, dataset), group in group_annotations(annotations, by_dataset).items():
            rows.append(win_rate(group, file=str(path), generator=generator, dataset=dataset))
    return rows


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_table(rows: Sequence[WinRate]) -> str:
    """A plain-text table, one line per row, columns aligned."""
    by_dataset = any(r.dataset is not None for r in rows)
    lc = any(r.length_controlled_winrate is not None for r in rows)
    header = (
        ["file", "generator"]
        + (["dataset"] if by_dataset else [])
        + ["win_rate", "std_err"]
        + (["lc_win_rate", "lc_std_err"] if lc else [])
        + ["n_wins", "n_wins_base", "n_draws", "n_total", "n_null", "avg_length"]
    )
    lines = [header]
    for r in rows:
        lines.append(
            [Path(r.file).name, r.generator]
            + ([r.dataset or "-"] if by_dataset else [])
            + [_fmt(r.win_rate, 2), _fmt(r.standard_error, 2)]
            + ([_fmt(r.length_controlled_winrate, 2), _fmt(r.lc_standard_error, 2)] if lc else [])
            + [str(r.n_wins), str(r.n_wins_base), str(r.n_draws), str(r.n_total), str(r.n_null)]
            + [_fmt(r.avg_length, 1)]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )
