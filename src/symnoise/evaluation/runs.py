"""Reading run directories for `symnoise report`: one `Run` per directory, with everything found in it.

Where each piece is looked for in a run directory ``RUN`` (the first file found wins; a missing piece is shown
as "–", never an error; a file that is there but unreadable is an error naming it). The file names come from
`symnoise.layout`; the candidate lists are :func:`piece_paths`, the one place that orders them:

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
sharegpt, openplatypus), else the stem of the data path. The method's name is its label in `symnoise.methods`:
none -> "base", uniform -> "NEFT", gaussian -> "Gaussian" (norm-matched, /sqrt3) or "Gaussian (unmatched)",
bernoulli -> "Bernoulli", symnoise -> "SymNoise" (unmatched Bernoulli-distributed methods get "(unmatched)" too; a
run whose symmetry differs from its method's default gets "(symmetric)" or "(one-sided)"). Variants (Table 4) add
alpha: "NEFT 5", "Gaussian 5/sqrt3" (matched), "Gaussian 5" (unmatched, as in the paper), "Bernoulli 5",
"SymNoise 5". Several noise draws per example (``noise.draws`` K > 1) add " xK": "NEFT x2", "NEFT 5 x2" (the
compute-matched control of SymNoise), "SymNoise 5 x2" (two antithetic pairs). Noise options other than method,
alpha, norm matching, symmetry and draws (schedule, region, length mode, execution) are not part of the labels.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..config import NoiseConfig
from ..files import read_json, read_json_lines, read_json_rows
from ..layout import (
    ANALYSIS_FILE,
    ANNOTATIONS,
    LEADERBOARD,
    OUTPUTS,
    REFERENCE_LOSS,
    RUN_INFO,
    RunLayout,
    judged_dir,
)
from ..methods import METHOD_TABLE
from .stats import MIN_WORDS, WORDS_PER_DATASET, OutputsError, OutputStats, load_outputs, output_stats
from .winrate import AnnotationError, WinRate, load_annotations, win_rate

DATASETS = ("alpaca", "evol-instruct", "sharegpt", "openplatypus")
PAPER_ALPHA = {"alpaca": 5.0, "evol-instruct": 5.0, "sharegpt": 10.0, "openplatypus": 15.0}
DEFAULT_ALPHA = 5.0
DEFAULT_WORDS = WORDS_PER_DATASET["alpaca"]
LEADERBOARD_COLUMNS = (("arc", "ARC"), ("hellaswag", "HellaSwag"), ("mmlu", "MMLU"))


class ReportError(ValueError):
    """A run directory or one of its files that cannot be used; the message names it."""


# ---------------------------------------------------------------------------------------------------- where


def piece_paths(run_dir: str | Path) -> dict[str, tuple[Path, ...]]:
    """Where each optional piece of a run is looked for, in the order tried: the default outputs of `symnoise
    generate` and the grid's copy in ``eval/``; the grid's annotations in ``eval/``, a judge's ``--out RUN``, then
    `symnoise judge`'s default folder beside each outputs file; the leaderboard in ``eval/``, then beside the run."""
    run = RunLayout(run_dir)
    outputs = (run.outputs, run.eval_dir / OUTPUTS)
    return {
        "outputs": outputs,
        "annotations": (
            run.eval_dir / ANNOTATIONS,
            run.root / ANNOTATIONS,
            *(judged_dir(path) / ANNOTATIONS for path in outputs),
        ),
        "leaderboard": (run.eval_dir / LEADERBOARD, run.root / LEADERBOARD),
    }


def piece_names() -> dict[str, list[str]]:
    """:func:`piece_paths` relative to the run directory, for help texts: ``eval/annotations.json``, ..."""
    root = Path("RUN")
    return {
        piece: [p.relative_to(root).as_posix() for p in paths] for piece, paths in piece_paths(root).items()
    }


def _first_existing(paths: Sequence[Path]) -> Path | None:
    return next((path for path in paths if path.is_file()), None)


# --------------------------------------------------------------------------------------------------- labels


def is_base(noise: NoiseConfig) -> bool:
    """Whether the run adds no noise (its method draws from no distribution): the "base" row of every table."""
    return METHOD_TABLE[noise.method].distribution is None


def label_suffix(noise: NoiseConfig) -> str:
    """What sets a run apart from the paper's setting of its method, as a label suffix: "(unmatched)",
    "(symmetric)" / "(one-sided)", and " xK" for K noise draws per example (none for a run without noise)."""
    parts = []
    if noise.distribution == "bernoulli" and not noise.match_uniform_norm:
        parts.append("(unmatched)")
    if noise.symmetric != METHOD_TABLE[noise.method].symmetric:
        parts.append("(symmetric)" if noise.symmetric else "(one-sided)")
    if noise.draws > 1 and not is_base(noise):
        parts.append(f"x{noise.draws}")
    return "".join(" " + p for p in parts)


def method_label(noise: NoiseConfig) -> str:
    """The row name of Tables 1 and 5: "base", "NEFT", "Gaussian", "Gaussian (unmatched)", "SymNoise", ..."""
    name = METHOD_TABLE[noise.method].label
    if noise.distribution == "gaussian" and not noise.match_uniform_norm:
        name += " (unmatched)"
    return name + label_suffix(noise)


def variant_label(noise: NoiseConfig) -> str:
    """The row name of Table 4, with alpha: "NEFT 5", "Gaussian 5/sqrt3", "Gaussian 5", "SymNoise 5", ..."""
    if is_base(noise):
        return METHOD_TABLE[noise.method].label
    alpha = f"{noise.alpha:g}"
    if noise.distribution == "gaussian" and noise.match_uniform_norm:
        alpha += "/sqrt3"
    return f"{METHOD_TABLE[noise.method].label} {alpha}{label_suffix(noise)}"


def dataset_label(run_info: dict[str, Any]) -> str:
    """The papers' dataset name from the run's data format, else the stem of its data path."""
    if run_info.get("format") in DATASETS:
        return run_info["format"]
    dataset = str(run_info.get("dataset") or "unknown")
    return Path(dataset.rstrip("/")).stem or dataset


# ------------------------------------------------------------------------------------------------------ runs


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


def distance_to_paper_alpha(run: Run) -> float:
    """How far the run's alpha is from the papers' alpha for its dataset (0 for a run without noise)."""
    return 0.0 if is_base(run.noise) else abs(run.noise.alpha - PAPER_ALPHA.get(run.dataset, DEFAULT_ALPHA))


# -------------------------------------------------------------------------------------------------- reading


def read_run_info(run_dir: Path) -> tuple[dict[str, Any], NoiseConfig]:
    """``symnoise_run.json`` and its validated noise config; an error naming the directory when it is absent."""
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: not a directory")
    path = RunLayout(run_dir).run_info
    if not path.is_file():
        raise ReportError(f"{run_dir}: no {RUN_INFO}, so not a run directory written by `symnoise train`")
    info = read_json(path, error=ReportError)
    if not isinstance(info, dict) or not isinstance(info.get("noise"), dict):
        raise ReportError(f"{path}: expected an object with a 'noise' object")
    try:
        return info, NoiseConfig.from_dict(info["noise"])
    except (TypeError, ValueError) as error:
        raise ReportError(f"{path}: field 'noise': {error}") from None


def read_train_metrics(run_dir: Path) -> TrainMetrics:
    """Steps and final loss from ``train_summary.json`` (else the last logged loss), tokens/s from the metrics."""
    run = RunLayout(run_dir)
    summary = read_json(run.summary, error=ReportError) if run.summary.is_file() else {}
    if not isinstance(summary, dict):
        raise ReportError(f"{run.summary}: expected a JSON object")
    lines = read_json_lines(run.metrics, error=ReportError) if run.metrics.is_file() else []
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
    report = read_json(path, error=ReportError)
    if not isinstance(report, dict) or not isinstance(report.get("tasks"), dict):
        raise ReportError(f"{path}: expected a `symnoise leaderboard` report with a 'tasks' object")
    scores = {}
    for task, _ in LEADERBOARD_COLUMNS:
        entry = report["tasks"].get(task)
        value = entry.get("value") if isinstance(entry, dict) else None
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
    files = {piece: _first_existing(paths) for piece, paths in piece_paths(run_dir).items()}
    outputs, annotations, leaderboard = files["outputs"], files["annotations"], files["leaderboard"]
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


def find_run_dirs(paths: Sequence[str | Path], depth: int = 3) -> tuple[list[Path], list[str]]:
    """The run directories among ``paths``, with the folders that hold runs expanded into them (``runs/*`` after
    `symnoise quickstart` names ``runs/quickstart``, whose runs are one level down; a grid's are three), and a
    note for each folder that was expanded. A path that is neither a run nor a folder of runs is kept, so that
    reading it names the problem."""
    found: list[Path] = []
    notes: list[str] = []
    for path in map(Path, paths):
        inside = [] if not path.is_dir() or RunLayout(path).run_info.is_file() else _runs_below(path, depth)
        if not inside:
            found.append(path)
            continue
        shown = ", ".join(str(p.relative_to(path)) for p in inside[:6]) + (" ..." if len(inside) > 6 else "")
        notes.append(f"{path}: not a run directory; reporting the {len(inside)} runs inside it ({shown})")
        found += inside
    return found, notes


def _runs_below(folder: Path, depth: int) -> list[Path]:
    runs, level = [], [folder]
    for _ in range(depth):
        children = sorted(
            c for parent in level for c in parent.iterdir() if c.is_dir() and not c.is_symlink()
        )
        runs += [c for c in children if RunLayout(c).run_info.is_file()]
        level = [c for c in children if not RunLayout(c).run_info.is_file()]
    return sorted(runs)


def load_runs(run_dirs: Sequence[str | Path], words: int | None = None) -> list[Run]:
    """Read every run directory (see :func:`load_run`); ``words`` overrides N for all of them."""
    check_words(words)
    if not run_dirs:
        raise ReportError("no run directories given")
    return [load_run(d, words) for d in run_dirs]


# ------------------------------------------------------------------------------- per-prompt readers (comparisons)

# The grid's reference_loss stage writes RUN/eval/reference_loss.json (`symnoise.layout.REFERENCE_LOSS`).


def read_training_seed(run_dir: str | Path) -> int | None:
    """``training.seed`` of the run's ``config.yaml`` (what `symnoise train` ran with); None when the file or the
    field is not there, so runs of unknown seed are told apart from seed 0."""
    import yaml

    path = RunLayout(run_dir).config
    if not path.is_file():
        return None
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ReportError(f"{path}: not valid YAML ({error})") from None
    training = config.get("training") if isinstance(config, dict) else None
    seed = training.get("seed") if isinstance(training, dict) else None
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


def reference_loss_path(run_dir: str | Path) -> Path:
    """Where the held-out reference loss of a run is looked for: ``RUN/eval/reference_loss.json``."""
    return RunLayout(run_dir).eval_dir / REFERENCE_LOSS


def read_reference_losses(run_dir: str | Path) -> list[dict[str, Any]] | None:
    """The per-example held-out reference losses of a run (``per_example`` of ``eval/reference_loss.json``: rows
    with ``instruction``, ``input``, mean token ``loss`` and ``tokens``); None when the file is absent or was
    written before per-example losses were kept."""
    path = reference_loss_path(run_dir)
    if not path.is_file():
        return None
    data = read_json(path, error=ReportError)
    rows = data.get("per_example") if isinstance(data, dict) else None
    if rows is None:
        return None
    for i, row in enumerate(rows if isinstance(rows, list) else [None]):
        if not (
            isinstance(row, dict)
            and isinstance(row.get("instruction"), str)
            and isinstance(row.get("input", ""), str)
            and isinstance(row.get("loss"), (int, float))
            and isinstance(row.get("tokens"), int)
        ):
            raise ReportError(
                f"{path}: per_example[{i}]: expected an object with instruction and input (strings), loss "
                "(a number) and tokens (an integer)"
            )
    return rows


def read_prompt_outputs(path: str | Path) -> list[tuple[str, str]]:
    """(instruction, output) of every row of an AlpacaEval-format outputs file, in file order."""
    rows = read_json_rows(Path(path), error=ReportError, what="outputs")
    found = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not all(
            isinstance(row.get(k), str) for k in ("instruction", "output")
        ):
            raise ReportError(f"{path}: row {i}: expected an object with 'instruction' and 'output' strings")
        found.append((row["instruction"], row["output"]))
    return found


def read_analysis(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's own entry of ``RUN/analysis/analysis.json`` (written by `symnoise analyze` or the grid's analyze
    stage), or None when the run was not analysed."""
    path = RunLayout(run_dir).analysis / ANALYSIS_FILE
    if not path.is_file():
        return None
    analysis = read_json(path, error=ReportError)
    entries = analysis.get("runs") if isinstance(analysis, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ReportError(f"{path}: expected an object with a non-empty 'runs' list")
    final = [e for e in entries if isinstance(e, dict) and Path(str(e.get("model", ""))) == Path(run_dir)]
    return (final or entries)[0]
