"""Length, 2-gram repetition and log-diversity of model outputs: the NEFTune (Sec. 5.2) / SymNoise (Table 5) table.

Per outputs file (AlpacaEval format: a JSON list of ``{instruction, output, generator, dataset}``):

* ``mean_chars`` and ``mean_words``: mean character length and mean whitespace-token length of all responses;
* on the first ``N`` whitespace words of each response, responses with fewer than ``N`` words dropped
  (``N`` = 50 Alpaca, 100 Evol-Instruct, 150 ShareGPT / OpenPlatypus): the mean 2-gram repetition (in %) and the
  mean log-diversity, and ``n_kept``, the number of responses long enough to count.

The repetition and diversity of one response follow ``measure_repetition_and_diversity`` of Kirchenbauer et al.
(jwkirchenbauer/lm-watermarking, ``watermark_reliability_release/metrics/repetition_diversity.py``), which the
NEFTune authors used; re-implemented here from its definition, including its two quirks, so the numbers are
comparable with the papers':

* for n in 2, 3, 4: ``rep_n = 1 - unique n-grams / counted n-grams`` over whitespace words, where the counting loop
  stops one n-gram early, so **the last n-gram of the response is skipped** (a response of w words contributes
  w - n n-grams, not w - n + 1). We replicate this.
* ``diversity = prod_n (1 - rep_n / 100)``: the fraction rep_n is divided by 100 again (as in their code), and
  ``log_diversity = -ln(max(1 - diversity, e^-20))``, so a response without any repeated n-gram scores 20.

The truncated response is rebuilt by joining its first N words with single spaces, so only word identity matters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..files import read_json_rows

WORDS_PER_DATASET = {"alpaca": 50, "evol-instruct": 100, "sharegpt": 150, "openplatypus": 150}
NGRAM_ORDERS = (2, 3, 4)
MAX_LOG_DIVERSITY = 20.0
MIN_WORDS = max(NGRAM_ORDERS) + 1


class OutputsError(ValueError):
    """An outputs file that cannot be read; the message names file, row and field."""


@dataclass(frozen=True)
class Repetition:
    """Repetition fractions (not %) for n = 2, 3, 4 and the derived diversity of one response."""

    rep_2: float
    rep_3: float
    rep_4: float
    diversity: float
    log_diversity: float


@dataclass(frozen=True)
class OutputStats:
    """The papers' length/repetition row of one outputs file; repetition fields are None when ``n_kept`` is 0."""

    file: str
    generators: list[str]
    n_responses: int
    mean_chars: float
    mean_words: float
    words: int
    n_kept: int
    rep_2_pct: float | None
    log_diversity: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def counted_ngrams(words: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """The n-grams the reference loop counts: starts 0 .. len - n - 1, i.e. all but the last one."""
    return [tuple(words[i : i + n]) for i in range(len(words) - n)]


def repetition_fraction(words: Sequence[str], n: int) -> float:
    """1 - unique / counted n-grams; needs at least n + 1 words."""
    grams = counted_ngrams(words, n)
    if not grams:
        raise ValueError(f"need at least {n + 1} words for {n}-gram repetition, got {len(words)}")
    return 1 - len(set(grams)) / len(grams)


def repetition_and_diversity(text: str) -> Repetition:
    """Kirchenbauer et al.'s per-response repetition and (log-)diversity of ``text`` (see the module docstring)."""
    words = text.split()
    reps = [repetition_fraction(words, n) for n in NGRAM_ORDERS]
    diversity = math.prod(1 - r / 100 for r in reps)
    log_diversity = -math.log(max(1 - diversity, math.exp(-MAX_LOG_DIVERSITY)))
    return Repetition(*reps, diversity=diversity, log_diversity=log_diversity)


def first_words(text: str, n_words: int) -> str | None:
    """The first ``n_words`` whitespace words joined by spaces, or None if the text is shorter."""
    words = text.split()
    return " ".join(words[:n_words]) if len(words) >= n_words else None


def words_for(dataset: str | None, words: int | None) -> int:
    """The truncation length N: explicit ``words`` wins, else the papers' value for ``dataset`` (default alpaca)."""
    n = words if words is not None else WORDS_PER_DATASET[dataset or "alpaca"]
    if n < MIN_WORDS:
        raise ValueError(f"--words must be at least {MIN_WORDS} (4-grams need {MIN_WORDS} words), got {n}")
    return n


def output_stats(outputs: Sequence[str], n_words: int, file: str = "", generators=()) -> OutputStats:
    """Lengths over all responses, repetition and log-diversity over those with at least ``n_words`` words."""
    if not outputs:
        raise ValueError(f"{file or 'outputs'}: no responses")
    kept = [t for t in (first_words(o, n_words) for o in outputs) if t is not None]
    reps = [repetition_and_diversity(t) for t in kept]
    return OutputStats(
        file=file,
        generators=list(generators),
        n_responses=len(outputs),
        mean_chars=sum(len(o) for o in outputs) / len(outputs),
        mean_words=sum(len(o.split()) for o in outputs) / len(outputs),
        words=n_words,
        n_kept=len(kept),
        rep_2_pct=100 * sum(r.rep_2 for r in reps) / len(reps) if reps else None,
        log_diversity=sum(r.log_diversity for r in reps) / len(reps) if reps else None,
    )


def load_outputs(path: str | Path) -> tuple[list[str], list[str]]:
    """Responses and distinct generator names (in order) of an AlpacaEval-format outputs file, validated."""
    path = Path(path)
    data = read_json_rows(path, error=OutputsError, what="outputs")
    outputs = []
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise OutputsError(f"{path}: row {i}: expected an object, got {type(row).__name__}")
        if not isinstance(row.get("output"), str):
            problem = "missing" if "output" not in row else f"not a string ({type(row['output']).__name__})"
            raise OutputsError(f"{path}: row {i}: field 'output' {problem}")
        outputs.append(row["output"])
    generators = list(dict.fromkeys(str(row["generator"]) for row in data if "generator" in row))
    return outputs, generators


def file_stats(paths: Sequence[str | Path], n_words: int) -> list[OutputStats]:
    """One row per outputs file."""
    rows = []
    for path in paths:
        outputs, generators = load_outputs(path)
        if not outputs:
            raise OutputsError(f"{path}: the file holds no responses")
        rows.append(output_stats(outputs, n_words, file=str(path), generators=generators))
    return rows


def column_names(files: Sequence[str | Path]) -> list[str]:
    """A name per file that tells them apart: the stem, or, where stems repeat (``runs/*/model_outputs.json``),
    the shortest tail of the path that differs (``neft/model_outputs``, or the run folder's name when every file
    has the same name)."""
    paths = [Path(f) for f in files]
    stems = [p.stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    if len({p.name for p in paths}) == 1 and len({p.parent.name for p in paths}) == len(paths):
        return [p.parent.name for p in paths]
    for depth in range(2, max(len(p.parts) for p in paths) + 1):
        names = ["/".join(p.with_suffix("").parts[-depth:]) for p in paths]
        if len(set(names)) == len(names):
            return names
    return [str(p) for p in paths]


def format_table(rows: Sequence[OutputStats]) -> str:
    """Side-by-side table: one column per file (named so that they differ, see `column_names`), one line per
    metric."""

    def fmt(value: float | None, digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    metrics = [
        ("responses", lambda r: str(r.n_responses)),
        ("mean chars", lambda r: fmt(r.mean_chars, 1)),
        ("mean words", lambda r: fmt(r.mean_words, 1)),
        ("first N words", lambda r: str(r.words)),
        ("kept (>= N words)", lambda r: str(r.n_kept)),
        ("2-gram rep. %", lambda r: fmt(r.rep_2_pct, 2)),
        ("log-diversity", lambda r: fmt(r.log_diversity, 2)),
    ]
    lines = [[""] + column_names([r.file for r in rows])]
    lines += [[name] + [get(r) for r in rows] for name, get in metrics]
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join(
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in lines
    )
