"""AlpacaEval 2's length-controlled win rate, computed by the ``alpaca_eval`` package's own function.

``alpaca_eval.metrics.glm_winrate.get_length_controlled_winrate`` fits, per model, a logistic regression of the
judge's preference on ``tanh`` of the standardised length difference, the instruction's difficulty and a model
term, regularised towards two length-gamed baselines, and reports the win rate predicted at equal length. It reads
one precomputed table from the hub dataset ``tatsu-lab/alpaca_eval``: ``df_gamed.csv`` (per instruction index:
its difficulty, and the annotations of the gamed baselines). Online the package downloads it; offline, pass a local
copy (``gamed_data``), which is handed to the package's function in place of its hub download. That table is under
the dataset's CC BY-NC 4.0 licence, so symnoise does not ship it.

The annotations must be one model's, in AlpacaEval's instruction order (row i = instruction i of the 805): the
difficulty is looked up by row position, as in the package. The published annotation files and a ``symnoise
judge`` run on an outputs file in that order satisfy this.
"""

from __future__ import annotations

import logging
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..files import read_json
from ..offline import hub_file_unavailable

GAMED_REPO = "tatsu-lab/alpaca_eval"
GAMED_FILENAME = "df_gamed.csv"
GAMED_SOURCE = f"the hub dataset {GAMED_REPO}, file {GAMED_FILENAME}"
GAMED_NEED = "instruction difficulties and the gamed baselines' annotations"
_PATCH_LOCK = threading.Lock()


class LengthControlError(ValueError):
    """The length-controlled win rate cannot be computed; the message says what is missing."""


def _glm_module():
    root = logging.getLogger()
    level = root.level
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            from alpaca_eval.metrics import glm_winrate
    except ImportError as err:
        raise LengthControlError(
            f"the length-controlled win rate needs the alpaca_eval package ({err}): "
            "pip install 'symnoise[eval]'"
        ) from None
    finally:
        root.setLevel(level)
    return glm_winrate


@contextmanager
def _local_gamed_data(glm_winrate, path: Path):
    """Let the package's function read ``path`` where it would download ``df_gamed.csv`` from the hub."""
    real = glm_winrate.hf_hub_download

    def local(*args, filename: str, **kwargs):
        if filename == GAMED_FILENAME:
            return str(path)
        return real(*args, filename=filename, **kwargs)

    with _PATCH_LOCK:
        glm_winrate.hf_hub_download = local
        try:
            yield
        finally:
            glm_winrate.hf_hub_download = real


def load_annotation_rows(path: str | Path) -> list[dict[str, Any]]:
    """The rows of one annotation file, checked for the fields the GLM reads and for a single model."""
    path = Path(path)
    rows = read_json(path, error=LengthControlError)
    if not isinstance(rows, list) or not rows:
        raise LengthControlError(f"{path}: expected a non-empty JSON list of annotations")
    for i, row in enumerate(rows):
        for field in ("output_1", "output_2", "generator_1", "generator_2", "preference"):
            if not isinstance(row, dict) or field not in row:
                raise LengthControlError(f"{path}: row {i} has no field {field!r}")
    for field in ("generator_1", "generator_2"):
        names = {row[field] for row in rows}
        if len(names) != 1:
            raise LengthControlError(
                f"{path}: the length-controlled win rate is per model, but {field} takes "
                f"{len(names)} values ({', '.join(sorted(map(str, names))[:4])}, ...)"
            )
    return rows


def _fitted_frame(path: str | Path, gamed_data: str | Path | None):
    """The annotations of ``path`` as the package's GLM reads them, fitted by ``length_controlled_v1``: the frame
    gains the GLM's per-row ``glm_preference``; also returns the package's metrics."""
    import pandas as pd

    glm_winrate = _glm_module()
    frame = pd.DataFrame(load_annotation_rows(path))
    frame = frame[["output_1", "output_2", "generator_1", "generator_2", "preference"]].assign(
        annotator=frame.get("annotator", "unknown")
    )
    kwargs = dict(save_weights_dir=None, is_warn_extreme_changes=False)
    with warnings.catch_warnings():  # scikit-learn's notices about LogisticRegressionCV's future attributes
        warnings.simplefilter("ignore", FutureWarning)
        return frame, _run_glm(glm_winrate, frame, path, gamed_data, kwargs)


def length_controlled_win_rate(path: str | Path, gamed_data: str | Path | None = None) -> dict[str, float]:
    """``length_controlled_winrate`` and ``lc_standard_error`` of one annotation file, by the package's GLM
    (``length_controlled_v1``); ``gamed_data``: a local ``df_gamed.csv``, else the package downloads it."""
    return _fitted_frame(path, gamed_data)[1]


def per_prompt_length_controlled(path: str | Path, gamed_data: str | Path | None = None) -> list[float]:
    """The GLM's prediction for each row of one annotation file (the probability that the model beats the
    reference at equal length), fitted as `length_controlled_win_rate` fits it: their mean x 100 is that
    function's ``length_controlled_winrate``. Paired comparisons difference these per prompt."""
    frame, _ = _fitted_frame(path, gamed_data)
    return [float(v) for v in frame["glm_preference"]]


def _run_glm(glm_winrate, frame, path, gamed_data, kwargs) -> dict[str, float]:
    try:
        if gamed_data is not None:
            gamed_data = Path(gamed_data)
            if not gamed_data.is_file():
                raise LengthControlError(f"{gamed_data}: file not found (expected a copy of {GAMED_SOURCE})")
            with _local_gamed_data(glm_winrate, gamed_data):
                metrics = glm_winrate.get_length_controlled_winrate(frame, **kwargs)
        else:
            # the package fetches the table unless the model is the reference itself (its win rate is 50 then)
            baseline = frame["generator_2"].iloc[0] == frame["generator_1"].iloc[0]
            unavailable = None if baseline else hub_file_unavailable(GAMED_REPO, GAMED_FILENAME)
            if unavailable is not None:  # said at once, where huggingface_hub would retry for about 25 s
                raise LengthControlError(
                    f"the length-controlled win rate needs {GAMED_SOURCE} ({GAMED_NEED}), which "
                    f"{unavailable}; pass --lc-data with a local copy"
                )
            metrics = glm_winrate.get_length_controlled_winrate(frame, **kwargs)
    except LengthControlError:
        raise
    except (KeyError, IndexError) as err:
        raise LengthControlError(
            f"{path}: rows do not match the instruction table of {GAMED_SOURCE} ({err}); "
            "the annotations must be in AlpacaEval's instruction order"
        ) from None
    except Exception as err:  # no network / hub error: say what is missing
        if gamed_data is not None:
            raise
        raise LengthControlError(
            f"the length-controlled win rate needs {GAMED_SOURCE} ({GAMED_NEED}), which could not be "
            f"fetched ({type(err).__name__}: {err}); pass --lc-data with a local copy"
        ) from None
    return {
        "length_controlled_winrate": float(metrics["length_controlled_winrate"]),
        "lc_standard_error": float(metrics["lc_standard_error"]),
    }
