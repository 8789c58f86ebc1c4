"""Paired comparisons between the methods of a set of runs: per training seed over prompts, and over seeds.

Runs (`symnoise.evaluation.runs.Run`) are grouped by (dataset, method label without alpha, seed): the label is
`method_label` ("NEFT", "SymNoise", "Gaussian (unmatched)", and " xK" for K noise draws per example), the seed
is ``training.seed`` of the run's ``config.yaml`` (None where that is not there). Where a group holds several runs
(several alphas of one method), the one closest to the papers' alpha for the dataset is used, the first given on
a tie; the others are named in a note.

Comparisons, per dataset, always "B - A":

* every noise method (B) against the run without noise (A, "base");
* SymNoise (every label of the ``symnoise`` method) against NEFT (``uniform``, one-sided, one draw) and against
  the compute-matched control: any one-sided noise method with ``noise.draws == 2`` (two noisy views per example
  and step, as SymNoise's pair costs).

Metrics, each where both runs have it (values per prompt, paired by prompt):

* ``win_rate``: 100 x the judge's score (0 reference wins, 50 draw, 100 model wins), from annotations judged against
  the same reference on the same prompts (`symnoise.evaluation.paired.pair`); a prompt whose preference is null in
  either file is left out of both sides;
* ``reference_loss``: the held-out loss of the reference answers, each prompt's mean token loss
  (``per_example`` of ``eval/reference_loss.json``), so every prompt weighs the same;
* ``length_chars``: characters of the output (from the outputs file, else the judged outputs);
* ``repetition_2gram``: 2-gram repetition (%) of the output's first N words (N as in the report's Table 5), over the
  prompts where both outputs have N words.

Per seed present for both methods, :func:`symnoise.evaluation.paired.paired_difference` of the per-prompt values
(the paired t-interval over prompts). Over seeds, each method's value per seed is its own mean over its prompts
(the win rate, mean length and repetition of the report's tables, the mean per-prompt reference loss):
:func:`~symnoise.evaluation.paired.seed_summary` per method and
:func:`~symnoise.evaluation.paired.seed_difference` of B - A, paired by seed when both methods have the same
seeds, else Welch's interval. A prompt-level interval says nothing about seed-to-seed variation, so with one seed
the verdict says that the data cannot support a claim beyond that seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .paired import (
    Judged,
    PairedDifference,
    PairingError,
    SeedDifference,
    SeedSummary,
    load_judged,
    pair,
    paired_difference,
    seed_difference,
    seed_summary,
)
from .runs import (
    DATASETS,
    ReportError,
    Run,
    distance_to_paper_alpha,
    is_base,
    read_prompt_outputs,
    read_reference_losses,
    read_training_seed,
)
from .stats import first_words, repetition_and_diversity
from .winrate import score

METRICS = {
    "win_rate": "win rate (%)",
    "reference_loss": "held-out ref. loss",
    "length_chars": "length (chars)",
    "repetition_2gram": "2-gram rep. (%)",
}
ONE_SEED = "one seed: the interval over seeds is undefined; a prompt-level interval does not cover seed-to-seed variation"


# ------------------------------------------------------------------------------------------------- grouping


def noise_draws(run: Run) -> int:
    """Noise draws per example and step of the run (1 where its noise config does not say)."""
    return int(run.noise.to_dict().get("draws", 1))


@dataclass(frozen=True)
class Arm:
    """The runs of one (dataset, method label) by seed, and the runs of that method left out (another alpha)."""

    dataset: str
    label: str
    runs: dict[int | None, Run]
    left_out: list[Run] = field(default_factory=list)

    @property
    def any_run(self) -> Run:
        return next(iter(self.runs.values()))


def group_runs(runs: Sequence[Run], seeds: dict[Path, int | None] | None = None) -> list[Arm]:
    """The runs grouped by dataset and alpha-free method label (draws included), one run per seed.

    ``seeds``: each run's training seed by path (read from its ``config.yaml`` when not given)."""
    seeds = seeds if seeds is not None else {r.path: read_training_seed(r.path) for r in runs}
    arms: dict[tuple[str, str, int], Arm] = {}
    for run in runs:
        key = (run.dataset, run.method, noise_draws(run))
        arm = arms.setdefault(key, Arm(run.dataset, run.method, {}))
        seed = seeds[run.path]
        if seed not in arm.runs:
            arm.runs[seed] = run
        elif distance_to_paper_alpha(run) < distance_to_paper_alpha(arm.runs[seed]):
            arm.left_out.append(arm.runs[seed])
            arm.runs[seed] = run
        else:
            arm.left_out.append(run)
    return list(arms.values())


def _is_neft(run: Run) -> bool:
    noise = run.noise
    return noise.method == "uniform" and not noise.symmetric and noise_draws(run) == 1


def _is_compute_matched_control(run: Run) -> bool:
    return not is_base(run.noise) and not run.noise.symmetric and noise_draws(run) == 2


def choose_comparisons(arms: Sequence[Arm]) -> list[tuple[str, Arm, Arm]]:
    """(kind, A, B) per dataset: every noise method vs base; SymNoise vs NEFT and vs the compute-matched control."""
    chosen = []
    present = list(dict.fromkeys(arm.dataset for arm in arms))
    for dataset in [d for d in DATASETS if d in present] + [d for d in present if d not in DATASETS]:
        here = [arm for arm in arms if arm.dataset == dataset]
        bases = [arm for arm in here if is_base(arm.any_run.noise)]
        noisy = [arm for arm in here if not is_base(arm.any_run.noise)]
        chosen += [("vs base", base, arm) for base in bases for arm in noisy]
        for sym in (arm for arm in noisy if arm.any_run.noise.method == "symnoise"):
            chosen += [("vs NEFT", arm, sym) for arm in noisy if _is_neft(arm.any_run)]
            chosen += [
                ("vs compute-matched control", arm, sym)
                for arm in noisy
                if _is_compute_matched_control(arm.any_run)
            ]
    return chosen


# ------------------------------------------------------------------------------------------ per-prompt data


class PromptData:
    """What one run holds per prompt, each piece read once when first asked for (None where the run lacks it)."""

    def __init__(self, run: Run):
        self.run = run
        self._cache: dict[str, Any] = {}

    def _once(self, name: str, read: Callable[[], Any]) -> Any:
        if name not in self._cache:
            self._cache[name] = read()
        return self._cache[name]

    @property
    def judged(self) -> Judged | None:
        path = self.run.files.get("annotations")
        return self._once("judged", lambda: load_judged(path) if path else None)

    @property
    def outputs(self) -> dict[str, str] | None:
        """Output text by instruction: the outputs file, else the judged outputs (the same texts)."""

        def read() -> dict[str, str] | None:
            path = self.run.files.get("outputs")
            if path:
                return _unique(read_prompt_outputs(path), path)
            judged = self.judged
            if judged is None:
                return None
            return _unique([(p.instruction, p.output) for p in judged.prompts], str(judged.path))

        return self._once("outputs", read)

    @property
    def reference_losses(self) -> dict[tuple[str, str], float] | None:
        def read() -> dict[tuple[str, str], float] | None:
            rows = read_reference_losses(self.run.path)
            if rows is None:
                return None
            return _unique([((r["instruction"], r.get("input", "")), r["loss"]) for r in rows], self.run.name)

        return self._once("reference_losses", read)


def _unique(items: Sequence[tuple[Any, Any]], where: str) -> dict:
    found: dict = {}
    for key, value in items:
        if key in found:
            raise ReportError(
                f"{where}: the prompt {str(key)[:80]!r} appears twice; compare needs each prompt once"
            )
        found[key] = value
    return found


def _pair_keys(a: dict, b: dict, what: str, names: tuple[str, str]) -> list[tuple[Any, Any]]:
    only_a, only_b = len(a.keys() - b.keys()), len(b.keys() - a.keys())
    if only_a or only_b:
        raise PairingError(
            f"{names[0]} and {names[1]}: {what} on different prompt sets ({only_a} prompts only in the first, "
            f"{only_b} only in the second); pairing needs the same prompts in both"
        )
    return [(a[key], b[key]) for key in a]


def _repetition(text: str, words: int) -> float | None:
    cut = first_words(text, words)
    return None if cut is None else 100 * repetition_and_diversity(cut).rep_2


def _mean(values: Sequence[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


def metric_available(metric: str, data: PromptData) -> bool:
    piece = {"win_rate": "judged", "reference_loss": "reference_losses"}.get(metric, "outputs")
    return getattr(data, piece) is not None


def own_value(metric: str, data: PromptData) -> float | None:
    """The run's own mean of the metric over its prompts (what it contributes per seed)."""
    if metric == "win_rate":
        return _mean([100 * score(p.preference) for p in data.judged.prompts if p.preference is not None])
    if metric == "reference_loss":
        return _mean(list(data.reference_losses.values()))
    if metric == "length_chars":
        return _mean([len(o) for o in data.outputs.values()])
    reps = [_repetition(o, data.run.n_words) for o in data.outputs.values()]
    return _mean([r for r in reps if r is not None])


def paired_values(metric: str, a: PromptData, b: PromptData) -> tuple[list[float], list[float]]:
    """The per-prompt values of A and B over their paired prompts; a PairingError when they cannot be paired."""
    names = (str(a.run.path), str(b.run.path))
    if metric == "win_rate":
        both = [
            (x, y)
            for x, y in pair(a.judged, b.judged)
            if x.preference is not None and y.preference is not None
        ]
        pairs = [(100 * score(x.preference), 100 * score(y.preference)) for x, y in both]
    elif metric == "reference_loss":
        pairs = _pair_keys(a.reference_losses, b.reference_losses, "reference losses", names)
    elif metric == "length_chars":
        pairs = [(len(x), len(y)) for x, y in _pair_keys(a.outputs, b.outputs, "outputs", names)]
    else:
        words = a.run.n_words
        texts = _pair_keys(a.outputs, b.outputs, "outputs", names)
        reps = [(_repetition(x, words), _repetition(y, words)) for x, y in texts]
        pairs = [(x, y) for x, y in reps if x is not None and y is not None]
    return [float(x) for x, _ in pairs], [float(y) for _, y in pairs]


# ---------------------------------------------------------------------------------------------- comparing


@dataclass(frozen=True)
class SeedComparison:
    """B - A on one training seed, paired over prompts."""

    seed: int | None
    a_run: str
    b_run: str
    paired: PairedDifference
    verdict: str

    def to_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "a_run": self.a_run, "b_run": self.b_run, **self.paired.to_dict(),
                "verdict": self.verdict}  # fmt: skip


@dataclass(frozen=True)
class Comparison:
    """One metric of one comparison: per seed over prompts, and over seeds (None where not computed)."""

    dataset: str
    kind: str
    a: str
    b: str
    metric: str
    seeds_a: list[int | None]
    seeds_b: list[int | None]
    per_seed: list[SeedComparison]
    a_over_seeds: SeedSummary | None
    b_over_seeds: SeedSummary | None
    over_seeds: SeedDifference | None
    verdict: str
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.b} − {self.a}"

    @property
    def seeds(self) -> list[int | None]:
        """The seeds both methods have (the prompt-level rows)."""
        return [s.seed for s in self.per_seed]

    @property
    def headline(self) -> tuple[float | None, float | None, float | None, str]:
        """(difference, ci_low, ci_high, over what): over seeds when that interval is defined, else the one
        seed's interval over prompts."""
        over = self.over_seeds
        if over is not None and (over.ci_low is not None or len(self.per_seed) != 1):
            basis = "seeds (paired)" if over.method == "paired" else "seeds (Welch)"
            return over.difference, over.ci_low, over.ci_high, basis
        if len(self.per_seed) == 1:
            p = self.per_seed[0].paired
            return p.difference, p.ci_low, p.ci_high, f"prompts ({_seed_text(self.per_seed[0].seed)})"
        return None, None, None, "–"

    def to_dict(self) -> dict[str, Any]:
        difference, low, high, basis = self.headline
        return {
            "dataset": self.dataset,
            "kind": self.kind,
            "a": self.a,
            "b": self.b,
            "metric": self.metric,
            "difference": difference,
            "ci_low": low,
            "ci_high": high,
            "interval_over": basis,
            "verdict": self.verdict,
            "seeds_a": self.seeds_a,
            "seeds_b": self.seeds_b,
            "per_seed": [s.to_dict() for s in self.per_seed],
            "a_over_seeds": _summary_dict(self.a_over_seeds),
            "b_over_seeds": _summary_dict(self.b_over_seeds),
            "over_seeds": self.over_seeds and self.over_seeds._asdict(),
            "notes": self.notes,
        }


def _summary_dict(summary: SeedSummary | None) -> dict[str, Any] | None:
    return summary and {**summary._asdict(), "note": summary.note}


def _seed_order(seeds) -> list[int | None]:
    return sorted(seeds, key=lambda s: (s is not None, s or 0))


def _seed_text(seed: int | None) -> str:
    return "seed unknown" if seed is None else f"seed {seed}"


def _claim(a: str, b: str, low: float | None, high: float | None, over: str, why: str | None = None) -> str:
    if low is None:
        return f"interval undefined over {over}" + (f": {why}" if why else "")
    if low > 0 or high < 0:
        return f"{b} {'higher' if low > 0 else 'lower'} than {a} at 95% over {over}"
    return f"not shown at 95% (interval contains 0) over {over}"


def _overlap(x: SeedSummary | None, y: SeedSummary | None) -> bool:
    return bool(x and y and x.ci_low is not None and y.ci_low is not None and x.ci_low <= y.ci_high
                and y.ci_low <= x.ci_high)  # fmt: skip


def row_verdict(a: str, b: str, per_seed, a_seeds, b_seeds, over: SeedDifference) -> str:
    """The verdict of a comparison in words: what the interval over seeds shows, or why no claim is supported."""
    if over.ci_low is None and len(per_seed) == 1 and over.method == "paired":
        return f"{per_seed[0].verdict}; {ONE_SEED}"
    if over.ci_low is None:
        return f"{over.note}; no claim over seeds"
    how = "paired by seed" if over.method == "paired" else "Welch, the seeds differ"
    text = _claim(a, b, over.ci_low, over.ci_high, f"seeds ({len(per_seed) or over.n_a} seeds, {how})")
    if _overlap(a_seeds, b_seeds):
        shown = over.ci_low > 0 or over.ci_high < 0
        text += "; the per-method intervals overlap" + (
            ", so only the difference paired by seed separates them"
            if shown and over.method == "paired"
            else ""
        )
    return text


def compare_metric(
    kind: str, a: Arm, b: Arm, metric: str, data: Callable[[Run], PromptData]
) -> Comparison | None:
    """One metric of one comparison; None when no seed of A and none of B has the metric."""
    try:
        a_runs = {s: r for s, r in a.runs.items() if metric_available(metric, data(r))}
        b_runs = {s: r for s, r in b.runs.items() if metric_available(metric, data(r))}
    except (PairingError, ReportError) as error:
        return Comparison(a.dataset, kind, a.label, b.label, metric, [], [], [], None, None, None,
                          "not compared: a run's files cannot be read for this metric", [str(error)])  # fmt: skip
    if not a_runs or not b_runs:
        return None
    seeds_a, seeds_b = _seed_order(a_runs), _seed_order(b_runs)
    common = [s for s in seeds_a if s in b_runs]
    base = Comparison(a.dataset, kind, a.label, b.label, metric, seeds_a, seeds_b, [], None, None, None, "")
    per_seed = []
    try:
        for seed in common:
            paired = paired_difference(*paired_values(metric, data(a_runs[seed]), data(b_runs[seed])))
            over = f"prompts ({_seed_text(seed)})"
            verdict = _claim(a.label, b.label, paired.ci_low, paired.ci_high, over, paired.note)
            per_seed.append(SeedComparison(seed, a_runs[seed].name, b_runs[seed].name, paired, verdict))
        anchor_a, anchor_b = a_runs[seeds_a[0]], b_runs[seeds_b[0]]
        for seed in (s for s in seeds_a if s not in b_runs):  # the judged sets must still be comparable
            paired_values(metric, data(a_runs[seed]), data(anchor_b))
        for seed in (s for s in seeds_b if s not in a_runs):
            paired_values(metric, data(anchor_a), data(b_runs[seed]))
    except (PairingError, ReportError) as error:
        return replace(base, verdict="not compared: the runs cannot be paired by prompt", notes=[str(error)])
    matched = seeds_a == seeds_b
    a_values = [own_value(metric, data(a_runs[s])) for s in (common if matched else seeds_a)]
    b_values = [own_value(metric, data(b_runs[s])) for s in (common if matched else seeds_b)]
    if None in a_values or None in b_values:
        return replace(base, per_seed=per_seed, verdict="not compared: no value on some seed (e.g. no output "
                       f"of {a.any_run.n_words} words or more)")  # fmt: skip
    over = seed_difference(a_values, b_values, paired_by_seed=matched)
    a_sum, b_sum = seed_summary(a_values), seed_summary(b_values)
    notes = [] if matched else [f"seeds differ ({a.label}: {_seeds_list(seeds_a)}; {b.label}: "
                                f"{_seeds_list(seeds_b)}): Welch's interval over each method's seeds; the rows "
                                "over prompts are the seeds both have"]  # fmt: skip
    verdict = row_verdict(a.label, b.label, per_seed, a_sum, b_sum, over)
    return replace(base, per_seed=per_seed, a_over_seeds=a_sum, b_over_seeds=b_sum, over_seeds=over,
                   verdict=verdict, notes=notes)  # fmt: skip


def _seeds_list(seeds: Sequence[int | None]) -> str:
    return ", ".join("?" if s is None else str(s) for s in seeds)


@dataclass(frozen=True)
class Comparisons:
    """Every comparison row and the notes on the grouping (runs left out, seeds unknown)."""

    rows: list[Comparison]
    notes: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"rows": [r.to_dict() for r in self.rows], "notes": self.notes}


def build_comparisons(runs: Sequence[Run], seeds: dict[Path, int | None] | None = None) -> Comparisons:
    """All comparisons of the runs (see the module docstring), metric by metric."""
    arms = group_runs(runs, seeds)
    cache: dict[Path, PromptData] = {}

    def data(run: Run) -> PromptData:
        return cache.setdefault(run.path, PromptData(run))

    rows = []
    for kind, a, b in choose_comparisons(arms):
        for metric in METRICS:
            row = compare_metric(kind, a, b, metric, data)
            if row is not None:
                rows.append(row)
    return Comparisons(rows, _grouping_notes(arms))


def _grouping_notes(arms: Sequence[Arm]) -> list[str]:
    notes = []
    left_out = [r for arm in arms for r in arm.left_out]
    if left_out:
        notes.append("left out of the comparisons (another run of the method and seed is closer to the papers' "
                      "alpha): " + ", ".join(f"{r.path} ({r.variant}, {r.dataset})" for r in left_out))  # fmt: skip
    if any(None in arm.runs for arm in arms):
        notes.append("runs without training.seed in config.yaml count as one seed of unknown value")
    return notes
