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

The files of one cell's run directory, its ``eval/`` folder included, are named by `symnoise.layout`.
"""

from __future__ import annotations

from pathlib import Path

from ..layout import FolderLayout, InFolder

# The synthetic fallback data in OUTPUT/synthetic/.
SYNTHETIC_TRAIN = "train.jsonl"
SYNTHETIC_EVAL = "eval.jsonl"


class GridLayout(FolderLayout):
    """The paths of one grid output folder (see the module docstring for what writes each)."""

    grid_file = InFolder("grid.json")
    status = InFolder("status.json")
    summary_json = InFolder("summary.json")
    summary_md = InFolder("summary.md")
    report_dir = InFolder("report")
    synthetic = InFolder("synthetic")  # where the synthetic fallback data is written
    pretrain = InFolder("pretrain")  # the `pretrain` section's folder: its stages.json and its model

    def cell_dir(self, cell_id: str) -> Path:
        """The run directory of the cell ``cell_id``."""
        return self.root / "cells" / cell_id

    @property
    def pretrained_model(self) -> Path:
        return self.pretrain / "model"
