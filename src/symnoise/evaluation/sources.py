"""Where every command finds its evaluation data: one resolver for `generate`, `judge`, `leaderboard` and `grid`.

Two kinds of source, chosen the same way everywhere:

* a local data folder, used only when one is named: the ``--data-dir`` flag, else a grid's
  ``evaluation.data_dir``, else the environment variable ``SYMNOISE_DATA_DIR``. Its layout is that of the
  project's shared data folder::

      alpaca_eval/alpaca_eval_ae1_reference_text_davinci_003.jsonl   AlpacaEval 1: 805 prompts + text-davinci-003
      alpaca_eval/model_outputs/gpt4_1106_preview.json                AlpacaEval 2 reference (GPT-4 Turbo)
      arc/ARC-Challenge/*.jsonl, hellaswag/hellaswag_val_full.txt, mmlu/{dev,test}/*.csv

* otherwise the public online sources: the AlpacaEval files of the ``tatsu-lab/alpaca_eval`` hub dataset
  (``alpaca_eval.json``: the 805 prompts with the text-davinci-003 outputs the AlpacaEval 1 judge compares with;
  ``alpaca_eval_gpt4_baseline.json``: the AlpacaEval 2 reference), fetched with ``huggingface_hub`` into the hub
  cache, and ARC / HellaSwag / MMLU as lm-evaluation-harness's own tasks (``arc_challenge``, ``hellaswag``,
  ``mmlu``), which download their hub datasets themselves.

Why files and not ``datasets.load_dataset("tatsu-lab/alpaca_eval", "alpaca_eval")``: that hub dataset is defined by a
loading script, which ``datasets`` 4 and later refuse to run; its data files are plain JSON lists with the fields
``instruction, output, generator, dataset`` that every reader here accepts.

Reachability (:func:`check_alpaca_eval`, :func:`check_leaderboard`, :func:`check_hub_repo`) is decided without
downloading anything: a local file must exist; a hub file or repository must exist on the hub, or, in offline mode
(``HF_HUB_OFFLINE=1``), already be in the hub cache.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..offline import hub_file_unavailable, hub_offline

DATA_DIR_ENV = "SYMNOISE_DATA_DIR"
ALPACA_EVAL_REPO = "tatsu-lab/alpaca_eval"


@dataclass(frozen=True)
class AlpacaEvalSource:
    """A named AlpacaEval file: where it is in a local data folder and in the hub dataset."""

    name: str
    description: str
    local: str
    hub_file: str
    repo: str = ALPACA_EVAL_REPO


ALPACA_EVAL_SOURCES: dict[str, AlpacaEvalSource] = {
    "alpaca_eval": AlpacaEvalSource(
        "alpaca_eval",
        "AlpacaEval 1: 805 prompts with the text-davinci-003 reference outputs",
        "alpaca_eval/alpaca_eval_ae1_reference_text_davinci_003.jsonl",
        "alpaca_eval.json",
    ),
    "alpaca_eval_2": AlpacaEvalSource(
        "alpaca_eval_2",
        "AlpacaEval 2: 805 prompts with the GPT-4 Turbo (gpt4_1106_preview) reference outputs",
        "alpaca_eval/model_outputs/gpt4_1106_preview.json",
        "alpaca_eval_gpt4_baseline.json",
    ),
}

# The hub datasets behind the harness's own leaderboard tasks (dataset_path in lm_eval/tasks/*/ of the harness).
HARNESS_DATASETS = {"arc": "allenai/ai2_arc", "hellaswag": "Rowan/hellaswag", "mmlu": "cais/mmlu"}

# The leaderboard's files in a local data folder (relative to it).
ARC_FILES = {"train": "Train", "validation": "Dev", "test": "Test"}  # split -> the official file's part name
HELLASWAG_VALIDATION = "hellaswag/hellaswag_val_full.txt"
HELLASWAG_TRAIN = "hellaswag/hellaswag_train.jsonl"  # optional: the hub's train split, for few-shot examples
MMLU_SPLITS = ("dev", "test")
MMLU_SUBJECTS = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge", "college_biology",
    "college_chemistry", "college_computer_science", "college_mathematics", "college_medicine", "college_physics",
    "computer_security", "conceptual_physics", "econometrics", "electrical_engineering", "elementary_mathematics",
    "formal_logic", "global_facts", "high_school_biology", "high_school_chemistry", "high_school_computer_science",
    "high_school_european_history", "high_school_geography", "high_school_government_and_politics",
    "high_school_macroeconomics", "high_school_mathematics", "high_school_microeconomics", "high_school_physics",
    "high_school_psychology", "high_school_statistics", "high_school_us_history", "high_school_world_history",
    "human_aging", "human_sexuality", "international_law", "jurisprudence", "logical_fallacies", "machine_learning",
    "management", "marketing", "medical_genetics", "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition",
    "philosophy", "prehistory", "professional_accounting", "professional_law", "professional_medicine",
    "professional_psychology", "public_relations", "security_studies", "sociology", "us_foreign_policy", "virology",
    "world_religions",
)  # fmt: skip


class SourceError(ValueError):
    """An evaluation input that cannot be found; the message says where it was looked for and what to do."""


def data_dir(flag: str | os.PathLike | None = None, config: str | os.PathLike | None = None) -> Path | None:
    """The local data folder to use: the flag, else the config's, else ``$SYMNOISE_DATA_DIR``; None: online."""
    for value in (flag, config, os.environ.get(DATA_DIR_ENV)):
        if value not in (None, ""):
            return Path(value).expanduser()
    return None


def is_alpaca_eval_name(value: str | None) -> bool:
    """Whether a grid's ``prompts``/``references`` value names a source (else it is a file path)."""
    return value in ALPACA_EVAL_SOURCES


# ------------------------------------------------------------------------------------------------- AlpacaEval


@dataclass(frozen=True)
class Resolved:
    """Where one named source will be read from: a local file, or a file of a hub dataset."""

    source: AlpacaEvalSource
    local_path: Path | None

    @property
    def online(self) -> bool:
        return self.local_path is None

    def describe(self) -> str:
        if self.local_path is not None:
            return f"{self.source.name}: local file {self.local_path}"
        return f"{self.source.name}: hub dataset {self.source.repo}, file {self.source.hub_file}"


def resolve_alpaca_eval(name: str, folder: Path | None = None) -> Resolved:
    """The named AlpacaEval source in ``folder`` (a local data folder) or, when there is none, on the hub."""
    if name not in ALPACA_EVAL_SOURCES:
        raise SourceError(
            f"unknown AlpacaEval source {name!r}; choose one of {', '.join(ALPACA_EVAL_SOURCES)}"
        )
    source = ALPACA_EVAL_SOURCES[name]
    return Resolved(source, None if folder is None else Path(folder) / source.local)


def alpaca_eval_file(
    name: str, folder: Path | None = None, cache_dir: str | os.PathLike | None = None
) -> Path:
    """A local file holding the named source (JSON list or JSONL of instruction/output/generator/dataset).

    With a data folder, its file (which must exist). Without, the hub file, downloaded once into the hub cache
    (``cache_dir``, default the Hugging Face cache); in offline mode it must already be cached.
    """
    resolved = resolve_alpaca_eval(name, folder)
    if resolved.local_path is not None:
        if not resolved.local_path.is_file():
            raise SourceError(
                f"{resolved.local_path} not found: the data folder {folder} has no "
                f"{resolved.source.local} ({resolved.source.description}); point --data-dir / "
                f"{DATA_DIR_ENV} at a folder that has it, or unset it to use the hub dataset"
            )
        return resolved.local_path
    source = resolved.source
    problem = hub_file_unavailable(source.repo, source.hub_file) if cache_dir is None else None
    if problem is not None:  # said at once, where huggingface_hub would retry for about 25 s
        raise SourceError(
            f"{source.hub_file} of the hub dataset {source.repo} {problem}; give a local data folder with "
            f"--data-dir or {DATA_DIR_ENV}"
        )
    from huggingface_hub import hf_hub_download

    try:
        return Path(
            hf_hub_download(
                resolved.source.repo, resolved.source.hub_file, repo_type="dataset", cache_dir=cache_dir
            )
        )
    except Exception as error:  # network, offline mode without a cached copy, gated repo, ...
        raise SourceError(
            f"cannot get {resolved.source.hub_file} of the hub dataset {resolved.source.repo} "
            f"({type(error).__name__}: {error}); give a local data folder with --data-dir or "
            f"{DATA_DIR_ENV}"
        ) from None


def check_alpaca_eval(
    name: str, folder: Path | None = None, cache_dir: str | os.PathLike | None = None, api=None
) -> str | None:
    """None when the named source can be read, else what is wrong (nothing is downloaded)."""
    resolved = resolve_alpaca_eval(name, folder)
    if resolved.local_path is not None:
        return None if resolved.local_path.is_file() else f"{resolved.describe()}: not found"
    return check_hub_repo(resolved.source.repo, "dataset", resolved.source.hub_file, cache_dir, api)


# --------------------------------------------------------------------------------------------------- the hub


def _cache_root(cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def check_hub_repo(
    repo: str,
    repo_type: str = "model",
    filename: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    api=None,
) -> str | None:
    """None when a hub repository (or one file of it) can be fetched, else why not.

    Online: asks the hub whether it exists (``api``: an ``HfApi``, replaceable in tests). Offline: looks in the
    hub cache (``cache_dir``, default the Hugging Face cache) for the file, or for any snapshot of the repository.
    """
    if hub_offline():
        if filename is not None:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(repo, filename, repo_type=repo_type, cache_dir=cache_dir)
            return (
                None
                if isinstance(found, str)
                else "HF_HUB_OFFLINE is set and the file is not in the hub cache"
            )
        folder = _cache_root(cache_dir) / f"{repo_type}s--{repo.replace('/', '--')}" / "snapshots"
        cached = folder.is_dir() and any(folder.iterdir())
        return None if cached else "HF_HUB_OFFLINE is set and the repository is not in the hub cache"
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    try:
        exists = (
            api.file_exists(repo, filename, repo_type=repo_type)
            if filename is not None
            else api.repo_exists(repo, repo_type=repo_type)
        )
    except Exception as error:
        return f"cannot reach the hub ({type(error).__name__}: {error})"
    if not exists:
        return (
            "no such file on the hub"
            if filename is not None
            else f"no such {repo_type} on the hub (or it is private and no token is set)"
        )
    return None


def hub_path(path: str) -> tuple[str, str, str | None] | None:
    """``hf://datasets/org/name/file`` -> (repo, "dataset", file); ``org/name`` -> (repo, "?", None); else None
    (a local path). The caller decides the repository type of a bare ``org/name``."""
    if path.startswith("hf://"):
        kind, _, rest = path.removeprefix("hf://").partition("/")
        parts = rest.split("/", 2)
        if len(parts) < 2:
            return None
        return "/".join(parts[:2]), kind.rstrip("s"), parts[2] if len(parts) == 3 else None
    looks_local = path.startswith((".", "/", "~")) or path.count("/") != 1 or Path(path).exists()
    return None if looks_local else (path, "?", None)


# ------------------------------------------------------------------------------------------- the leaderboard


def arc_file(split: str) -> str:
    """The official ARC-Challenge JSONL of one split (``train``, ``validation``, ``test``) in a data folder."""
    return f"arc/ARC-Challenge/ARC-Challenge-{ARC_FILES[split]}.jsonl"


def mmlu_file(subject: str, split: str) -> str:
    """The headerless MMLU CSV of one subject and split (``dev``, ``test``) in a data folder."""
    return f"mmlu/{split}/{subject}_{split}.csv"


def required_files(task: str) -> list[str]:
    """The files, relative to the data folder, that the offline version of a leaderboard ``task`` reads."""
    if task == "arc":
        return [arc_file(split) for split in ARC_FILES]
    if task == "hellaswag":
        return [HELLASWAG_VALIDATION]
    return [mmlu_file(subject, split) for subject in MMLU_SUBJECTS for split in MMLU_SPLITS]


@dataclass(frozen=True)
class LeaderboardSource:
    """How the leaderboard tasks will be scored: from a local data folder, or online with the harness's tasks."""

    online: bool
    data_dir: Path | None

    def describe(self) -> str:
        if self.online:
            return "lm-evaluation-harness tasks arc_challenge, hellaswag, mmlu (hub datasets)"
        return f"local data folder {self.data_dir}"


def resolve_leaderboard(folder: Path | None, online: bool = False) -> LeaderboardSource:
    """Online when asked, or when no local data folder is named; else that folder."""
    return (
        LeaderboardSource(True, None) if online or folder is None else LeaderboardSource(False, Path(folder))
    )


def check_leaderboard(
    tasks: Sequence[str], source: LeaderboardSource, cache_dir: str | os.PathLike | None = None, api=None
) -> list[str]:
    """What is missing to score ``tasks`` from ``source`` (empty: all reachable)."""
    if importlib.util.find_spec("lm_eval") is None:
        return ['lm-evaluation-harness is not installed (pip install "symnoise[eval]")']
    if not source.online:
        problems = []
        for task in tasks:
            missing = [f for f in required_files(task) if not (source.data_dir / f).is_file()]
            if missing:
                more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
                problems.append(f"leaderboard {task}: {source.data_dir / missing[0]}{more} not found")
        return problems
    problems = []
    for task in tasks:
        problem = check_hub_repo(HARNESS_DATASETS[task], "dataset", None, cache_dir, api)
        if problem:
            problems.append(f"leaderboard {task}: hub dataset {HARNESS_DATASETS[task]}: {problem}")
    return problems
