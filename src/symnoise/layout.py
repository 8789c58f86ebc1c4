"""Where each file of a run directory lives: the one place that names them.

A run directory (``training.output_dir``) holds one training run and what later commands write beside it::

    RUN/
      symnoise.lock            run_start.json        config.yaml          symnoise_run.json
      data_report.json         metrics.jsonl         metrics.csv          nonfinite_steps.jsonl
      train_summary.json       README.md (card)      runs/ (TensorBoard)  checkpoint-N/
      model.safetensors | adapter_model.safetensors, tokenizer files       (the final model)
      model_outputs.json       model_outputs.partial.jsonl                  (`symnoise generate`)
      model_outputs_judged/    annotations.json, metrics.json, judge_cache.jsonl (`symnoise judge`)
      analysis/                analysis.json, analysis.md, plots (`symnoise analyze`)
      eval/                    the grid's evaluations: annotations.json, leaderboard.json, stats.json, ...
      cell.yaml  stages.json  failure.json  slurm_jobs.jsonl                (a grid cell)

`RunLayout` gives each of these a name; `TRAIN_FILES` / `TRAIN_PATTERNS` say what `symnoise train` writes (and
``--overwrite`` may delete), `COMPANION_FILES` what other commands write beside a run (never deleted).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

LOCK_FILE = "symnoise.lock"
START_RECORD = "run_start.json"
RUN_INFO = "symnoise_run.json"
CONFIG_FILE = "config.yaml"
DATA_REPORT = "data_report.json"
METRICS_LOG = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
NONFINITE_LOG = "nonfinite_steps.jsonl"
TRAIN_SUMMARY = "train_summary.json"
MODEL_CARD = "README.md"
TENSORBOARD_DIR = "runs"
OUTPUTS = "model_outputs.json"
OUTPUTS_PARTIAL = "model_outputs.partial.jsonl"
EVAL_DIR = "eval"
CELL_CONFIG = "cell.yaml"
STAGES = "stages.json"
FAILURE = "failure.json"
SLURM_JOBS = "slurm_jobs.jsonl"  # a grid cell's Slurm jobs: submitted, started, preempted (grid.jobs)
# What a judge writes into its output folder.
ANNOTATIONS = "annotations.json"
JUDGE_METRICS = "metrics.json"
JUDGE_CACHE = "judge_cache.jsonl"
LEADERBOARD = "leaderboard.json"
# What the grid writes into a run's eval/ folder besides the judge's files.
REFERENCE_LOSS = "reference_loss.json"
OUTPUT_STATS = "stats.json"
ANALYSIS_DIR = "analysis"  # `symnoise analyze RUN` writes here by default
ANALYSIS_FILE = "analysis.json"
FINAL_WEIGHTS = ("model.safetensors", "adapter_model.safetensors", "model.safetensors.index.json")

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "chat_template.jinja", "chat_template.json", "tokenizer.model", "vocab.json", "vocab.txt", "merges.txt",
    "spiece.model", "sentencepiece.bpe.model",
)  # fmt: skip


def judged_dir(outputs: str | Path) -> Path:
    """The default folder `symnoise judge` writes a judgement of ``outputs`` into: ``STEM_judged`` beside it."""
    outputs = Path(outputs)
    return outputs.with_name(f"{outputs.stem}_judged")


# What `symnoise train` writes into a run directory (and `--overwrite` may delete).
TRAIN_FILES = frozenset(
    {
        LOCK_FILE, START_RECORD, CONFIG_FILE, RUN_INFO, DATA_REPORT, METRICS_LOG, METRICS_CSV, TENSORBOARD_DIR,
        NONFINITE_LOG, TRAIN_SUMMARY, MODEL_CARD, "config.json", "generation_config.json", "adapter_config.json",
        *FINAL_WEIGHTS, *TOKENIZER_FILES,
    }
)  # fmt: skip
TRAIN_PATTERNS = (
    re.compile(r"^checkpoint-\d+$"),
    re.compile(r"^tmp-.+"),
    re.compile(r"^\.write_test_\d+$"),
    re.compile(r"^model-\d+-of-\d+\.safetensors$"),
    re.compile(r".+\.tmp$"),
)
# What other symnoise commands write beside a run (`symnoise grid`, `generate`, `judge`): kept, never deleted.
COMPANION_FILES = frozenset(
    {
        CELL_CONFIG, STAGES, FAILURE, SLURM_JOBS, OUTPUTS, OUTPUTS_PARTIAL, EVAL_DIR, ANALYSIS_DIR,
        judged_dir(OUTPUTS).name,
    }
)  # fmt: skip


class InFolder:
    """A layout's path attribute: ``layout.root / name``, declared in one line (``lock = InFolder(LOCK_FILE)``)."""

    def __init__(self, name: str):
        self.name = name

    def __get__(self, layout: FolderLayout, owner: type | None = None) -> Path:
        return layout.root / self.name


@dataclass(frozen=True)
class FolderLayout:
    """A folder whose files a subclass names with `InFolder` attributes."""

    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))


class RunLayout(FolderLayout):
    """The paths of one run directory's files (see the module docstring for what writes each)."""

    # written by `symnoise train`
    lock = InFolder(LOCK_FILE)
    start_record = InFolder(START_RECORD)
    config = InFolder(CONFIG_FILE)
    run_info = InFolder(RUN_INFO)
    data_report = InFolder(DATA_REPORT)
    metrics = InFolder(METRICS_LOG)
    metrics_csv = InFolder(METRICS_CSV)
    nonfinite_log = InFolder(NONFINITE_LOG)
    summary = InFolder(TRAIN_SUMMARY)
    model_card = InFolder(MODEL_CARD)
    tensorboard = InFolder(TENSORBOARD_DIR)
    # written beside the run by the other commands
    outputs = InFolder(OUTPUTS)
    outputs_partial = InFolder(OUTPUTS_PARTIAL)
    eval_dir = InFolder(EVAL_DIR)
    analysis = InFolder(ANALYSIS_DIR)  # `symnoise analyze`'s default output folder for this run alone
    cell_config = InFolder(CELL_CONFIG)
    stages = InFolder(STAGES)
    failure = InFolder(FAILURE)
    slurm_jobs = InFolder(SLURM_JOBS)

    @property
    def judged(self) -> Path:
        """`symnoise judge`'s default output folder for this run's outputs."""
        return judged_dir(self.outputs)

    # what the directory holds
    def is_run(self) -> bool:
        """Whether `symnoise train` started a run here (its start record or run info is present)."""
        return self.start_record.is_file() or self.run_info.is_file()

    def is_finished(self) -> bool:
        """Whether the run wrote its final model (one weights file, or a sharded model's index)."""
        return any((self.root / name).exists() for name in FINAL_WEIGHTS)
