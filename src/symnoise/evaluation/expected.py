"""The papers' numbers next to the reproduced ones: `symnoise report --expected FILE` (or a grid's companion file).

An expected file (``configs/grid/GRID.expected.yaml``) holds tables in the paper's layout::

    paper: SymNoise (arXiv 2312.01523)
    tables:
      - title: "Table 1: AlpacaEval 1 win rate (%) against text-davinci-003, GPT-4 judge"
        key: {model: meta-llama/Llama-2-7b-hf, metric: win_rate}     # shared by every cell of the table
        digits: 2                                                    # as printed in the paper
        columns:
          - {label: Alpaca, dataset: alpaca}
        rows:
          - {label: LLaMA-2 7B, method: base, values: [29.79]}       # one value per column; null: not in the paper

Each cell's key is the table's, the row's and the column's merged (they may not disagree). It selects the run the
cell compares with: ``model`` (the run's model name or path; the last path component is enough), ``dataset`` (the
report's dataset label), ``method`` (the report's row name: base, NEFT, Gaussian, Bernoulli, SymNoise; several alphas
-> the papers' alpha for the dataset) or ``variant`` (the report's Table 4 name: "NEFT 10", "Gaussian 5/sqrt3"), and
``metric``: ``win_rate`` (with the judge's standard error), ``win_rate_chars`` (values ``[win rate, mean characters]``,
as in SymNoise Table 4), ``mean_chars``, ``mean_words``, ``rep_2_pct``, ``log_diversity``, or a leaderboard task
``arc``, ``hellaswag``, ``mmlu`` (in %, with the harness's standard error). A row with ``reproduce: false`` is the
paper's only (e.g. a released model that no grid trains).

Every cell prints ``paper / reproduced (difference ± standard error)``: the difference is reproduced minus paper;
the standard error, of the reproduced number, is shown where the judge or the harness gives one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..files import read_json
from .runs import ReportError, Run, distance_to_paper_alpha
from .tables import DASH, Table

Metric = Literal[
    "win_rate",
    "win_rate_chars",
    "mean_chars",
    "mean_words",
    "rep_2_pct",
    "log_diversity",
    "arc",
    "hellaswag",
    "mmlu",
]
KEY_FIELDS = ("model", "dataset", "method", "variant", "metric")
LEADERBOARD_METRICS = ("arc", "hellaswag", "mmlu")
STATS_METRICS = ("mean_chars", "mean_words", "rep_2_pct", "log_diversity")
LAYOUT_NOTE = (
    "each cell: paper / reproduced (reproduced - paper ± standard error of the reproduced value, where "
    "the judge or the harness gives one); – where a number is missing"
)


class _Key(BaseModel):
    model_config = ConfigDict(extra="forbid", str_min_length=1)

    model: str | None = None
    dataset: str | None = None
    method: str | None = None
    variant: str | None = None
    metric: Metric | None = None

    def fields(self) -> dict[str, str]:
        return {k: getattr(self, k) for k in KEY_FIELDS if getattr(self, k) is not None}


class ExpectedColumn(_Key):
    label: str


class ExpectedRow(_Key):
    label: str
    values: list[float | list[float] | None]
    digits: int | None = Field(None, ge=0, le=4)
    reproduce: bool = True


class ExpectedTable(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str
    key: _Key = Field(default_factory=_Key)
    digits: int = Field(2, ge=0, le=4)
    columns: list[ExpectedColumn] = Field(min_length=1)
    rows: list[ExpectedRow] = Field(min_length=1)
    notes: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _shape(self) -> ExpectedTable:
        for i, row in enumerate(self.rows):
            if len(row.values) != len(self.columns):
                raise ValueError(
                    f"rows.{i} ({row.label}): {len(row.values)} values for {len(self.columns)} columns"
                )
            for column in self.columns:
                key = merge_keys(self.key, row, column)
                if row.reproduce and "metric" not in key:
                    raise ValueError(f"rows.{i} ({row.label}): no metric for column {column.label}")
                pair = key.get("metric") == "win_rate_chars"
                for value in row.values:
                    if value is not None and isinstance(value, list) != pair:
                        raise ValueError(
                            f"rows.{i} ({row.label}): win_rate_chars takes [win rate, characters] "
                            "pairs, every other metric single numbers"
                        )
        return self


class ExpectedFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    paper: str
    tables: list[ExpectedTable] = Field(min_length=1)


def merge_keys(*parts: _Key) -> dict[str, str]:
    """The cell key: the fields of every part; two parts naming one field differently is an error."""
    merged: dict[str, str] = {}
    for part in parts:
        for field, value in part.fields().items():
            if merged.setdefault(field, value) != value:
                raise ValueError(
                    f"{field} is {merged[field]!r} in one part of the key and {value!r} in another"
                )
    return merged


def load_expected(path: str | Path) -> ExpectedFile:
    """Read and validate an expected file; a `ReportError` names the file and the field."""
    path = Path(path)
    if not path.is_file():
        raise ReportError(f"{path}: expected-numbers file not found")
    try:
        return ExpectedFile.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    except yaml.YAMLError as error:
        raise ReportError(f"{path}: not valid YAML ({error})") from None
    except ValidationError as error:
        where = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or '(top level)'}: {e['msg']}" for e in error.errors()
        )
        raise ReportError(f"{path}: invalid expected-numbers file: {where}") from None


# --------------------------------------------------------------------------------------------- matching runs


def _same_model(run_model: str | None, wanted: str) -> bool:
    if run_model is None:
        return False
    return (
        run_model == wanted
        or Path(run_model.rstrip("/")).name.lower() == Path(wanted.rstrip("/")).name.lower()
    )


def matches(run: Run, key: dict[str, str]) -> bool:
    """Whether the run is the one a cell with this key describes (the metric is not part of the match)."""
    return (
        ("model" not in key or _same_model(run.model, key["model"]))
        and ("dataset" not in key or run.dataset == key["dataset"])
        and ("method" not in key or run.method == key["method"])
        and ("variant" not in key or run.variant == key["variant"])
    )


def find_run(runs: Sequence[Run], key: dict[str, str]) -> Run | None:
    """The matching run; of several, the one closest to the papers' alpha for its dataset, the first on a tie."""
    found = [r for r in runs if matches(r, key)]
    return min(found, key=distance_to_paper_alpha) if found else None


@dataclass(frozen=True)
class Measured:
    value: float | None
    standard_error: float | None = None
    chars: float | None = None


def _leaderboard_stderr(run: Run, task: str) -> float | None:
    path = run.files.get("leaderboard")
    if not path:
        return None
    entry = (read_json(path, error=ReportError).get("tasks") or {}).get(task) or {}
    stderr = entry.get("stderr") if isinstance(entry, dict) else None
    return 100 * stderr if isinstance(stderr, (int, float)) else None


def measure(run: Run, metric: str) -> Measured:
    """The reproduced number of ``metric`` in ``run`` (win rates and leaderboard scores in %)."""
    if metric in ("win_rate", "win_rate_chars"):
        rate = run.win_rate
        value = rate.win_rate if rate else None
        return Measured(
            value,
            rate.standard_error if rate else None,
            run.mean_chars if metric == "win_rate_chars" else None,
        )
    if metric in STATS_METRICS:
        return Measured(getattr(run.stats, metric) if run.stats else None)
    score = (run.leaderboard or {}).get(metric)
    return Measured(None if score is None else 100 * score, _leaderboard_stderr(run, metric))


# ------------------------------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class Comparison:
    """One cell: the paper's number, the reproduced one, their difference and the reproduced standard error."""

    table: str
    row: str
    column: str
    metric: str | None
    paper: float | None
    paper_chars: float | None
    reproduced: float | None
    reproduced_chars: float | None
    difference: float | None
    standard_error: float | None
    run: str | None


def compare_cell(
    table: ExpectedTable, row: ExpectedRow, column: ExpectedColumn, value: Any, runs: Sequence[Run]
) -> Comparison:
    key = merge_keys(table.key, row, column)
    paper, paper_chars = (value[0], value[1]) if isinstance(value, list) else (value, None)
    run = find_run(runs, key) if row.reproduce else None
    measured = measure(run, key["metric"]) if run else Measured(None)
    difference = None if paper is None or measured.value is None else measured.value - paper
    return Comparison(
        table.title,
        row.label,
        column.label,
        key.get("metric"),
        paper,
        paper_chars,
        measured.value,
        measured.chars,
        difference,
        measured.standard_error,
        str(run.path) if run else None,
    )


def _number(value: float | None, digits: int, chars: float | None = None, with_chars: bool = False) -> str:
    if value is None:
        return DASH
    text = f"{value:.{digits}f}"
    return text + (f" ({DASH if chars is None else f'{chars:.0f}'})" if with_chars else "")


def render_cell(comparison: Comparison, digits: int) -> str:
    """``paper / reproduced (difference ± standard error)``, each part shown only when it is known."""
    pair = comparison.metric == "win_rate_chars"
    text = (
        f"{_number(comparison.paper, digits, comparison.paper_chars, pair)} / "
        f"{_number(comparison.reproduced, digits, comparison.reproduced_chars, pair)}"
    )
    if comparison.difference is not None:
        error = "" if comparison.standard_error is None else f" ± {comparison.standard_error:.{digits}f}"
        text += f" ({comparison.difference:+.{digits}f}{error})"
    return text


def comparison_tables(expected: ExpectedFile, runs: Sequence[Run]) -> tuple[list[Table], list[Comparison]]:
    """One markdown table per expected table, in the paper's layout, and every cell's comparison."""
    tables, comparisons = [], []
    for spec in expected.tables:
        rows, used = [], set()
        for row in spec.rows:
            cells = []
            for column, value in zip(spec.columns, row.values, strict=True):
                comparison = compare_cell(spec, row, column, value, runs)
                comparisons.append(comparison)
                used.add(comparison.run)
                cells.append(render_cell(comparison, spec.digits if row.digits is None else row.digits))
            rows.append([row.label] + cells)
        shown = sorted(u for u in used if u)
        notes = [f"paper: {expected.paper}; {LAYOUT_NOTE}"] + list(spec.notes)
        notes.append(
            f"runs compared: {', '.join(Path(p).name for p in shown)}"
            if shown
            else "no run matches any cell of this table yet"
        )
        tables.append(
            Table(
                f"Paper vs reproduced, {spec.title}",
                [""] + [c.label for c in spec.columns],
                rows,
                notes=notes,
            )
        )
    return tables, comparisons


def comparisons_to_json(comparisons: Sequence[Comparison]) -> list[dict[str, Any]]:
    return [asdict(c) for c in comparisons]
