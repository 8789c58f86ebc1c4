"""Paired differences between two judged runs, and mean +- interval over training seeds.

Two annotation files (or run directories holding one, found where :func:`symnoise.evaluation.runs.piece_paths`
looks) judged against the same reference are compared prompt by prompt:

* **Pairing.** Rows are matched by ``instruction`` (and ``dataset`` subset when every row of both files has one).
  Both files must hold exactly the same prompts (none may be in one file only), each prompt once, one model per
  file, and the same reference on every prompt (equal ``output_1`` and ``generator_1``); otherwise
  :class:`PairingError` names both files and the first prompt (or the number of prompts) that differ.
* **Win rate.** ``q`` per prompt as in :mod:`symnoise.evaluation.winrate` (0 = reference wins, 1 = model wins,
  0.5 = draw). A prompt whose preference is null in either file is left out of both sides. Per prompt
  ``d_i = 100 (q_B,i - q_A,i)`` (percentage points).
* **Length and repetition.** Per prompt, the model output's (``output_2``) characters and whitespace words over all
  paired prompts (a null preference does not change an output's length), and the 2-gram repetition (%) and
  log-diversity of :mod:`symnoise.evaluation.stats` on the first N words, over the prompts where both outputs have
  at least N words.
* **Length-controlled win rate.** AlpacaEval's GLM (:mod:`symnoise.evaluation.length_control`) predicts, per prompt,
  the probability that the model beats the reference at equal length; ``d_i`` is the difference of those
  predictions (x 100) over the win rate's prompts. Its interval is conditional on the two fitted GLMs, as the
  package's own ``lc_standard_error`` is.

For every quantity (:func:`paired_difference`): ``difference = mean(d)``, ``standard_error = sd(d, ddof=1) /
sqrt(n)``, and the 95% interval ``difference +- t_{0.975, n-1} * standard_error`` (the paired t-interval); ``a``
and ``b`` are each side's own mean over the same prompts, so ``difference = b - a``. A paired bootstrap
(:func:`bootstrap_interval`) gives a percentile interval as a second opinion.

Over training seeds (:func:`seed_summary`, :func:`seed_difference`): mean +- t-interval of one method's values, and
of the difference between two methods (paired by seed when the seeds match one to one, else Welch's interval).
The Student-t quantiles are computed here (:func:`t_quantile`), so this module needs no scipy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

from ..files import read_json_rows
from .length_control import per_prompt_length_controlled
from .runs import piece_names, piece_paths
from .stats import first_words, repetition_and_diversity
from .winrate import AnnotationError, head_to_head, parse_annotation, score

CONFIDENCE = 0.95
ANNOTATION_FIELDS = ("instruction", "output_1", "generator_1", "output_2", "generator_2", "preference")
ONE_VALUE = "one value: the interval is undefined (a t-interval needs at least 2)"


class PairingError(ValueError):
    """Two runs that cannot be compared prompt by prompt, or a file that is not annotations; names the files."""


# ------------------------------------------------------------------------------------------ Student t


def _continued_fraction(x: float, a: float, b: float) -> float:
    """The continued fraction of the regularized incomplete beta function I_x(a, b), by the modified Lentz
    method: 1 + d_1 / (1 + d_2 / (1 + ...)) with d_2m = m(b-m)x / ((a+2m-1)(a+2m)) and
    d_2m+1 = -(a+m)(a+b+m)x / ((a+2m)(a+2m+1))."""
    tiny = 1e-300
    f, c, d = 1.0, 1.0, 0.0
    for j in range(1, 10_000):
        m = j // 2
        if j % 2:
            num = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        else:
            num = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        d = 1 + num * d
        d = 1 / (d if abs(d) > tiny else tiny)
        c = 1 + num / c
        c = c if abs(c) > tiny else tiny
        f *= c * d
        if abs(c * d - 1) < 1e-16:
            return f
    raise ArithmeticError(f"incomplete beta: no convergence for x={x}, a={a}, b={b}")


def regularized_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b) for 0 <= x <= 1 and a, b > 0 (the continued fraction on whichever side converges fast)."""
    if x <= 0 or x >= 1:
        return 0.0 if x <= 0 else 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) / a / _continued_fraction(x, a, b)
    return 1 - math.exp(log_front) / b / _continued_fraction(1 - x, b, a)


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` (> 0, not necessarily whole) degrees of freedom."""
    tail = 0.5 * regularized_beta(df / (df + t * t), df / 2, 0.5)
    return 1 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p (0 < p < 1), by bisection to machine precision on the monotone CDF.

    Agrees with scipy.stats.t.ppf to about 1e-12 (relative) up to df = 5000 and 1e-9 at df = 1e6, where
    lgamma's cancellation in the incomplete beta's prefactor costs digits."""
    if not 0 < p < 1 or df <= 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        low, high = high, 2 * high
    for _ in range(200):
        mid = (low + high) / 2
        if mid in (low, high):
            break
        low, high = (mid, high) if t_cdf(mid, df) < p else (low, mid)
    return (low + high) / 2


def t_interval(mean: float, standard_error: float, df: float) -> tuple[float, float]:
    """mean -+ t_{0.975, df} * standard_error: the two-sided 95% t-interval."""
    half = t_quantile(0.5 + CONFIDENCE / 2, df) * standard_error
    return mean - half, mean + half


# ------------------------------------------------------------------------------------- paired differences


@dataclass(frozen=True)
class PairedDifference:
    """B - A over n paired values: mean difference, its standard error and 95% t-interval, each side's mean.
    The interval fields are None when n < 2 (``note`` says why)."""

    difference: float | None
    standard_error: float | None
    ci_low: float | None
    ci_high: float | None
    n: int
    a: float | None
    b: float | None
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def shows_difference(self) -> bool:
        """Whether the 95% interval excludes 0."""
        return self.ci_low is not None and (self.ci_low > 0 or self.ci_high < 0)


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)


def _sd(values: Sequence[float]) -> float:
    mean = _mean(values)
    return math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))


def paired_difference(a: Sequence[float], b: Sequence[float]) -> PairedDifference:
    """The paired t-statistics of ``d_i = b_i - a_i``: mean(d), sd(d, ddof=1)/sqrt(n), mean -+ t_{0.975,n-1} SE."""
    if len(a) != len(b):
        raise ValueError(f"paired values need equal lengths, got {len(a)} and {len(b)}")
    n = len(a)
    if n == 0:
        return PairedDifference(None, None, None, None, 0, None, None, "no paired values")
    d = [y - x for x, y in zip(a, b, strict=True)]
    if n == 1:
        return PairedDifference(d[0], None, None, None, 1, a[0], b[0], ONE_VALUE)
    se = _sd(d) / math.sqrt(n)
    return PairedDifference(_mean(d), se, *t_interval(_mean(d), se, n - 1), n, _mean(a), _mean(b))


def bootstrap_interval(
    a: Sequence[float], b: Sequence[float], resamples: int, seed: int
) -> tuple[float, float]:
    """The paired bootstrap's 95% percentile interval of mean(b - a): ``resamples`` resamplings of the prompts
    with replacement (numpy's default_rng(seed)), the 2.5th and 97.5th percentiles (linear interpolation)."""
    import numpy as np

    d = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    if len(d) < 2 or resamples < 1:
        raise ValueError("the bootstrap needs at least 2 paired values and 1 resample")
    means = d[np.random.default_rng(seed).integers(0, len(d), size=(resamples, len(d)))].mean(axis=1)
    low, high = np.percentile(means, [100 * (1 - CONFIDENCE) / 2, 100 * (1 + CONFIDENCE) / 2])
    return float(low), float(high)


# ------------------------------------------------------------------------------------------------- seeds


class SeedSummary(NamedTuple):
    """Mean, sample sd and 95% t-interval of one method's values over training seeds (``note``: why the interval
    is None)."""

    mean: float
    sd: float | None
    ci_low: float | None
    ci_high: float | None
    n: int

    @property
    def note(self) -> str | None:
        return None if self.n > 1 else "one seed: " + ONE_VALUE


def seed_summary(values: Sequence[float]) -> SeedSummary:
    """mean, sd (ddof=1), mean -+ t_{0.975, n-1} sd/sqrt(n), n over seeds; with one seed sd and interval are None."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("seed_summary needs at least one value")
    n = len(values)
    if n == 1:
        return SeedSummary(values[0], None, None, None, 1)
    sd = _sd(values)
    return SeedSummary(_mean(values), sd, *t_interval(_mean(values), sd / math.sqrt(n), n - 1), n)


class SeedDifference(NamedTuple):
    """mean(B) - mean(A) over seeds, its standard error, 95% interval, degrees of freedom and method ("paired" or
    "welch"); interval fields None with ``note`` saying why when it is undefined."""

    difference: float
    standard_error: float | None
    ci_low: float | None
    ci_high: float | None
    df: float | None
    method: str
    n_a: int
    n_b: int
    note: str | None = None


def seed_difference(
    a_values: Sequence[float], b_values: Sequence[float], paired_by_seed: bool
) -> SeedDifference:
    """B - A over training seeds.

    ``paired_by_seed``: a_values[i] and b_values[i] come from the same seed (same data order and initialisation),
    so the paired t-interval on d_i = b_i - a_i is used (df = n - 1). Otherwise Welch's interval: SE =
    sqrt(s_a^2/n_a + s_b^2/n_b), df by Welch-Satterthwaite. With fewer than 2 values on a side (or pairs), the
    interval is undefined: None, and ``note`` says so.
    """
    a, b = [float(v) for v in a_values], [float(v) for v in b_values]
    if not a or not b:
        raise ValueError("seed_difference needs at least one value per method")
    if paired_by_seed:
        if len(a) != len(b):
            raise ValueError(
                f"paired by seed needs one value per seed on both sides, got {len(a)} and {len(b)}"
            )
        p = paired_difference(a, b)
        note = p.note and "one seed: " + p.note
        return SeedDifference(p.difference, p.standard_error, p.ci_low, p.ci_high, len(a) - 1 or None,
                              "paired", len(a), len(b), note)  # fmt: skip
    difference = _mean(b) - _mean(a)
    if len(a) < 2 or len(b) < 2:
        note = "a method with one seed: the Welch interval is undefined (needs at least 2 seeds per method)"
        return SeedDifference(difference, None, None, None, None, "welch", len(a), len(b), note)
    va, vb = _sd(a) ** 2 / len(a), _sd(b) ** 2 / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        note = "no spread over seeds: the interval is the point"
        return SeedDifference(difference, 0.0, difference, difference, None, "welch", len(a), len(b), note)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return SeedDifference(difference, se, *t_interval(difference, se, df), df, "welch", len(a), len(b))


# ------------------------------------------------------------------------------------- reading and pairing


@dataclass(frozen=True)
class Prompt:
    """One annotation row: the prompt, the reference and the model's output, the judge's preference."""

    row: int
    instruction: str
    dataset: str | None
    reference: str
    reference_generator: str
    output: str
    preference: float | None


@dataclass(frozen=True)
class Judged:
    """One annotation file: its path, model (``generator_2``) and rows in file order."""

    path: Path
    generator: str
    prompts: list[Prompt]


def annotations_path(path: str | Path) -> Path:
    """An annotation file as given, or the first annotation file found in a run directory."""
    path = Path(path)
    if not path.is_dir():
        return path
    found = next((p for p in piece_paths(path)["annotations"] if p.is_file()), None)
    if found is None:
        names = ", ".join(piece_names()["annotations"])
        raise PairingError(f"{path}: no annotations found in this run directory (looked for {names}); "
                           "judge its outputs first (`symnoise judge`)")  # fmt: skip
    return found


def _text(row: dict, field: str, where: str) -> str:
    if not isinstance(row.get(field), str):
        raise PairingError(
            f"{where}: field {field!r}: expected a string, got {type(row.get(field)).__name__}"
        )
    return row[field]


def load_judged(path: str | Path) -> Judged:
    """Read and validate an annotation file (or a run directory's) for pairing; one model per file."""
    path = annotations_path(path)
    rows = read_json_rows(path, error=PairingError, what="annotations")
    if not rows:
        raise PairingError(f"{path}: holds no annotations")
    prompts = []
    for i, row in enumerate(rows):
        where = f"{path}: row {i}"
        missing = [f for f in ANNOTATION_FIELDS if not isinstance(row, dict) or f not in row]
        if missing:
            raise PairingError(
                f"{where} is not an annotation: missing {', '.join(map(repr, missing))} (an AlpacaEval annotation "
                f"file, as `symnoise judge` writes, has rows with {', '.join(ANNOTATION_FIELDS)})"
            )
        try:
            parsed = parse_annotation(row, where)
        except AnnotationError as error:
            raise PairingError(str(error)) from None
        texts = {f: _text(row, f, where) for f in ("instruction", "output_1", "generator_1")}
        prompts.append(Prompt(i, texts["instruction"], parsed.dataset, texts["output_1"], texts["generator_1"],
                              row["output_2"], parsed.preference))  # fmt: skip
    generators = list(dict.fromkeys(str(row["generator_2"]) for row in rows))
    if len(generators) != 1:
        raise PairingError(f"{path}: holds {len(generators)} models ({', '.join(generators[:4])}); compare needs "
                           "one model per file")  # fmt: skip
    return Judged(path, generators[0], prompts)


def _keyed(judged: Judged, by_dataset: bool) -> dict[tuple[str | None, str], Prompt]:
    keyed: dict[tuple[str | None, str], Prompt] = {}
    for p in judged.prompts:
        key = (p.dataset if by_dataset else None, p.instruction)
        if key in keyed:
            raise PairingError(f"{judged.path}: the prompt {p.instruction[:80]!r} appears twice (rows "
                               f"{keyed[key].row} and {p.row}); each prompt must be judged once")  # fmt: skip
        keyed[key] = p
    return keyed


def pair(a: Judged, b: Judged) -> list[tuple[Prompt, Prompt]]:
    """The prompts of A and B matched by instruction (and subset when both files have one on every row), in A's
    order; a PairingError naming both files when the prompt sets or the references differ."""
    by_dataset = all(p.dataset is not None for judged in (a, b) for p in judged.prompts)
    ka, kb = _keyed(a, by_dataset), _keyed(b, by_dataset)
    only_a, only_b = len(ka.keys() - kb.keys()), len(kb.keys() - ka.keys())
    if only_a or only_b:
        raise PairingError(
            f"{a.path} and {b.path} were judged on different prompt sets ({only_a} prompts only in the first, "
            f"{only_b} only in the second; {len(ka.keys() & kb.keys())} shared): compare needs the same prompts "
            "in both (none may differ)"
        )
    pairs = [(p, kb[key]) for key, p in ka.items()]
    for pa, pb in pairs:
        if pa.reference != pb.reference or pa.reference_generator != pb.reference_generator:
            what = "generator_1" if pa.reference_generator != pb.reference_generator else "output_1"
            raise PairingError(
                f"{a.path} and {b.path} were judged against different references (their {what} differs, first on "
                f"the prompt {pa.instruction[:80]!r}): only runs judged against the same reference can be paired"
            )
    return pairs


# ---------------------------------------------------------------------------------------------- comparing


def _sides(pairs: Sequence[tuple[Any, Any]], value) -> tuple[list[float], list[float]]:
    """``value`` of every A item and of every B item of the pairs."""
    return [value(x) for x, _ in pairs], [value(y) for _, y in pairs]


def _both_judged(pairs: Sequence[tuple[Prompt, Prompt]]) -> list[tuple[Prompt, Prompt]]:
    return [(x, y) for x, y in pairs if x.preference is not None and y.preference is not None]


def win_rate_difference(pairs: Sequence[tuple[Prompt, Prompt]], bootstrap: int = 0, seed: int = 0) -> dict:
    """The win rate's paired difference over the prompts both judged (nulls left out of both sides), each side's
    own `head_to_head` win rate there, on how many prompts B scored above / below A, and with ``bootstrap`` > 0
    the paired bootstrap interval."""
    kept = _both_judged(pairs)
    qa, qb = _sides(kept, lambda p: 100 * score(p.preference))
    result = paired_difference(qa, qb).to_dict()
    result.update(
        a=head_to_head(x.preference for x, _ in kept)["win_rate"],
        b=head_to_head(y.preference for _, y in kept)["win_rate"],
        left_out=len(pairs) - len(kept),
        null_a=sum(x.preference is None for x, _ in pairs),
        null_b=sum(y.preference is None for _, y in pairs),
        b_better=sum(y > x for x, y in zip(qa, qb, strict=True)),
        a_better=sum(y < x for x, y in zip(qa, qb, strict=True)),
    )
    if bootstrap:
        low, high = bootstrap_interval(qa, qb, bootstrap, seed)
        result["bootstrap"] = {"ci_low": low, "ci_high": high, "resamples": bootstrap, "seed": seed}
    return result


def output_differences(pairs: Sequence[tuple[Prompt, Prompt]], words: int) -> dict[str, dict[str, Any]]:
    """Length (characters, whitespace words) over all paired prompts; 2-gram repetition (%) and log-diversity on
    the first ``words`` words over the prompts where both outputs are at least that long."""
    cut = [(first_words(x.output, words), first_words(y.output, words)) for x, y in pairs]
    reps = [(repetition_and_diversity(x), repetition_and_diversity(y)) for x, y in cut if x and y]
    return {
        "length_chars": paired_difference(*_sides(pairs, lambda p: len(p.output))).to_dict(),
        "length_words": paired_difference(*_sides(pairs, lambda p: len(p.output.split()))).to_dict(),
        "repetition_2gram": {
            **paired_difference(*_sides(reps, lambda r: 100 * r.rep_2)).to_dict(),
            "words": words,
        },
        "log_diversity": {
            **paired_difference(*_sides(reps, lambda r: r.log_diversity)).to_dict(),
            "words": words,
        },
    }


def length_controlled_difference(
    a: Judged, b: Judged, pairs: Sequence[tuple[Prompt, Prompt]], gamed_data: str | Path | None
) -> dict[str, Any]:
    """The paired difference of the GLM's per-prompt predictions (x 100) over the win rate's prompts."""
    lc_a, lc_b = (per_prompt_length_controlled(judged.path, gamed_data) for judged in (a, b))
    kept = _both_judged(pairs)
    return paired_difference(
        [100 * lc_a[x.row] for x, _ in kept], [100 * lc_b[y.row] for _, y in kept]
    ).to_dict()


LC_NOT_ASKED = (
    "not computed: add --length-controlled (it needs the alpaca_eval package and df_gamed.csv from the hub dataset "
    "tatsu-lab/alpaca_eval, downloaded or given with --lc-data, and both files in AlpacaEval's instruction order)"
)


def compare(
    a_path: str | Path,
    b_path: str | Path,
    words: int = 50,
    bootstrap: int = 0,
    seed: int = 0,
    length_controlled: bool = False,
    gamed_data: str | Path | None = None,
) -> dict[str, Any]:
    """Everything ``symnoise compare A B`` reports, as the JSON it prints (see the module docstring).

    The top level repeats the win rate's ``difference``, ``standard_error``, ``ci_low``, ``ci_high`` and ``n``.
    ``length_controlled`` is None unless asked for (``length_controlled_note`` then says why); a failure of the
    length control raises :class:`symnoise.evaluation.length_control.LengthControlError`.
    """
    a, b = load_judged(a_path), load_judged(b_path)
    pairs = pair(a, b)
    wins = win_rate_difference(pairs, bootstrap, seed)
    lc = length_controlled_difference(a, b, pairs, gamed_data) if length_controlled else None
    return {
        "a": str(a.path),
        "b": str(b.path),
        "generator_a": a.generator,
        "generator_b": b.generator,
        "reference": pairs[0][0].reference_generator,
        "n_prompts": len(pairs),
        **{key: wins[key] for key in ("difference", "standard_error", "ci_low", "ci_high", "n")},
        "win_rate": wins,
        **output_differences(pairs, words),
        "length_controlled": lc,
        "length_controlled_note": None if length_controlled else LC_NOT_ASKED,
        "interval": "difference +- t(0.975, n-1) * SE, SE = sd(d, ddof=1) / sqrt(n), d = per-prompt B - A",
    }
