"""The reference outputs an AlpacaEval annotator compares against, online or offline.

* AlpacaEval 1 (``ae1``): text-davinci-003's outputs, the hub dataset ``tatsu-lab/alpaca_eval`` config
  ``alpaca_eval``; offline, ``DATA_DIR/alpaca_eval/alpaca_eval_ae1_reference_text_davinci_003.jsonl``.
* AlpacaEval 2 (``ae2``): gpt4_1106_preview's outputs, config ``alpaca_eval_gpt4_baseline``; offline,
  ``DATA_DIR/alpaca_eval/model_outputs/gpt4_1106_preview.json``.

Online, the ``alpaca_eval`` package's own loaders fetch them (``constants.ALPACAEVAL_REFERENCE_OUTPUTS_1`` / ``_2``);
with ``HF_HUB_OFFLINE`` or ``HF_DATASETS_OFFLINE`` set, when the hub does not answer a quick probe (the loader
would retry it for about 25 s) and the dataset is not cached, or when the loader fails, the local file is read
instead.
Which set an annotator uses follows the package's own table of leaderboards (``PRECOMPUTED_LEADERBOARDS``).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..offline import hub_file_unavailable, hub_offline
from .judge_inputs import load_records
from .sources import ALPACA_EVAL_REPO, ALPACA_EVAL_SOURCES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReferenceSet:
    """One AlpacaEval reference: the package's loader for it, its hub config, and the named evaluation source
    (`symnoise.evaluation.sources`) that says where it is in a data folder."""

    name: str
    generator: str
    hub_config: str
    source: str


REFERENCE_SETS = {
    "ae1": ReferenceSet("ae1", "text_davinci_003", "alpaca_eval", "alpaca_eval"),
    "ae2": ReferenceSet("ae2", "gpt4_1106_preview", "alpaca_eval_gpt4_baseline", "alpaca_eval_2"),
}
# AlpacaEval 2 annotators whose leaderboard the package keys on the AE2 reference (used when it is not installed).
_AE2_ANNOTATORS = frozenset(
    {
        "weighted_alpaca_eval_gpt4_turbo",
        "alpaca_eval_gpt4_turbo_fn",
        "claude_3_opus_ranking",
        "mistral-large-2402_ranking",
        "alpaca_eval_cot_gpt4_turbo_fn",
    }
)


class ReferenceError(ValueError):
    """No reference outputs could be found; the message names every place looked at."""


def reference_set_for(annotator: str) -> ReferenceSet:
    """``ae2`` for annotators of the AlpacaEval 2 leaderboard (per the package's leaderboard table), else ``ae1``."""
    try:
        constants = _alpaca_eval_constants()
        ae2 = str(constants.ALPACAEVAL_REFERENCE_OUTPUTS_2)
        names = {name for ref, name in constants.PRECOMPUTED_LEADERBOARDS if ref == ae2}
    except ImportError:
        names = _AE2_ANNOTATORS
    return REFERENCE_SETS["ae2" if annotator in names else "ae1"]


def local_reference_path(reference: ReferenceSet, data_dir: str | Path) -> Path:
    return Path(data_dir) / ALPACA_EVAL_SOURCES[reference.source].local


def load_reference_outputs(
    reference: ReferenceSet, data_dir: str | Path | None = None, offline: bool | None = None
) -> tuple[list[dict], str]:
    """The reference rows (``instruction``, ``output``, ``generator``, ``dataset``) and where they came from.

    Online: the ``alpaca_eval`` package's loader; offline (or if it fails): ``data_dir``'s local file.
    """
    offline = hub_offline(datasets=True) if offline is None else offline
    problems = []
    unavailable = None if offline else hub_file_unavailable(ALPACA_EVAL_REPO)
    if offline:
        problems.append(
            f"offline (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE), so the hub dataset {ALPACA_EVAL_REPO} was not asked"
        )
    elif unavailable is not None:
        problems.append(
            f"the alpaca_eval package's loader was not tried: the hub dataset {ALPACA_EVAL_REPO} {unavailable}"
        )
    else:
        try:
            return _load_with_package(
                reference
            ), f"alpaca_eval package loader ({ALPACA_EVAL_REPO}, {reference.hub_config})"
        except Exception as err:  # no package, hub error: fall back to the local file
            problems.append(f"the alpaca_eval package's loader failed ({type(err).__name__}: {err})")
            log.warning("reference outputs: %s; trying the local file", problems[-1])
    if data_dir is not None:
        path = local_reference_path(reference, data_dir)
        if path.is_file():
            return load_records(path), str(path)
        problems.append(f"no file {path}")
    else:
        problems.append("no data folder given")
    raise ReferenceError(
        f"no {reference.name} reference outputs ({reference.generator}): {'; '.join(problems)}. "
        f"Pass --reference FILE, or --data-dir DIR holding {ALPACA_EVAL_SOURCES[reference.source].local}"
    )


def _alpaca_eval_constants():
    with (
        warnings.catch_warnings()
    ):  # alpaca_eval's `import pkg_resources` warns about setuptools' deprecation
        warnings.simplefilter("ignore", UserWarning)
        from alpaca_eval import constants
    return constants


def _load_with_package(reference: ReferenceSet) -> list[dict]:
    constants = _alpaca_eval_constants()
    loader = (
        constants.ALPACAEVAL_REFERENCE_OUTPUTS_1
        if reference.name == "ae1"
        else constants.ALPACAEVAL_REFERENCE_OUTPUTS_2
    )
    rows = [dict(row) for row in loader()]
    return [
        {k: v for k, v in row.items() if k in ("instruction", "output", "generator", "dataset")}
        for row in rows
    ]
