"""Where each file of a grid's output folder lives: the one place that names them.

A grid's ``output_dir`` holds::

    OUTPUT/
      grid.json              the validated grid file, as run
      status.json            every cell's status, stages and error (rewritten after each cell)
      summary.json, summary.md   one row per cell (`symnoise.grid.summary`)
      report/                `symnoise report` over every trained cell
      cells/CELL_ID/         one run directory per cell (`symnoise.layout.RunLayout`, with the grid's
                             cell.yaml, stages.json, failure.json beside the training files)
      synthetic/             the synthetic fallback data (train.jsonl, eval.jsonl)
      pretrain/              the `pretrain` section's stages.json and model/

The files of one cell's run directory are named by `symnoise.layout`; what the grid's own evaluation stages add
to its ``eval/`` folder (beside the judge's files and the leaderboard) is named here.
"""

from __future__ import annotations

from pathlib import Path

from ..layout import FolderLayout, InFolder

GRID_FILE = "grid.json"
STATUS_FILE = "status.json"
SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
REPORT_DIR = "report"
CELLS_DIR = "cells"
SYNTHETIC_DIR = "synthetic"
PRETRAIN_DIR = "pretrain"
PRETRAINED_MODEL_DIR = "model"
# The synthetic fallback data in OUTPUT/synthetic/.
SYNTHETIC_TRAIN = "train.jsonl"
SYNTHETIC_EVAL = "eval.jsonl"
# What the grid's evaluation stages write into a cell's eval/ folder (`symnoise.layout.RunLayout.eval_dir`).


class GridLayout(FolderLayout):
    """The paths of one grid output folder (see the module docstring for what writes each)."""

    grid_file = InFolder(GRID_FILE)
    status = InFolder(STATUS_FILE)
    summary_json = InFolder(SUMMARY_JSON)
    summary_md = InFolder(SUMMARY_MD)
    report_dir = InFolder(REPORT_DIR)
    synthetic = InFolder(SYNTHETIC_DIR)  # where the synthetic fallback data is written
    pretrain = InFolder(PRETRAIN_DIR)  # the `pretrain` section's folder: its stages.json and its model

    def cell_dir(self, cell_id: str) -> Path:
        """The run directory of the cell ``cell_id``."""
        return self.root / CELLS_DIR / cell_id

    @property
    def pretrained_model(self) -> Path:
        return self.pretrain / PRETRAINED_MODEL_DIR
