"""The grid's results: `symnoise report` over every trained cell, and a one-row-per-cell summary table.

``OUTPUT/report/`` holds the papers' tables (`symnoise.evaluation.report.write_report`, with ``report.json``).
``OUTPUT/summary.md`` and ``summary.json`` add what those tables do not show: each cell's status, its held-out
reference loss, and the failure of a failed cell.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..evaluation.expected import load_expected
from ..evaluation.report import write_report
from ..evaluation.runs import load_runs
from ..files import write_json_atomic, write_text_atomic
from .cells import Cell, pretrained_model_dir
from .layout import GridLayout
from .spec import Grid, expected_file
from .stages import CellOutcome, is_finished, read_failure, read_stages

SUMMARY_COLUMNS = (
    ("method", "method", None),
    ("alpha", "alpha", "g"),
    ("seed", "seed", None),
    ("status", "status", None),
    ("final train loss", "final_loss", ".3f"),
    ("held-out ref. loss", "reference_loss", ".3f"),
    ("mean chars", "mean_chars", ".1f"),
    ("mean words", "mean_words", ".1f"),
    ("kept", "n_kept", None),
    ("2-gram rep. %", "rep_2_pct", ".2f"),
    ("log-diversity", "log_diversity", ".2f"),
    ("win rate", "win_rate", ".2f"),
    ("train s", "train_s", ".0f"),
)


def cell_row(grid: Grid, cell: Cell, outcome: CellOutcome | None) -> dict[str, Any]:
    """What the summary shows of one cell, from its stage markers."""
    stages = read_stages(cell.run_dir)
    failure = read_failure(cell.run_dir)
    status = "finished" if is_finished(grid, cell) else ("failed" if failure else "pending")
    row = {
        "cell": cell.id,
        "model": cell.model,
        "dataset": cell.dataset,
        "method": cell.method,
        "alpha": cell.alpha,
        "seed": cell.seed,
        "status": status,
        "error": failure and f"{failure['stage']}: {failure['error']}",
        "final_loss": stages.get("train", {}).get("final_loss"),
        "train_s": stages.get("train", {}).get("seconds"),
        "reference_loss": stages.get("reference_loss", {}).get("loss"),
        "win_rate": stages.get("judge", {}).get("win_rate"),
    }
    row.update(
        {
            k: stages.get("stats", {}).get(k)
            for k in ("mean_chars", "mean_words", "n_kept", "rep_2_pct", "log_diversity")
        }
    )
    return row


def _cell_text(value: Any, spec: str | None) -> str:
    if value is None:
        return "–"
    return format(value, spec) if spec else str(value)


def summary_markdown(rows: list[dict[str, Any]], grid: Grid) -> str:
    """One table per (model, dataset), one row per cell; failures listed under it."""
    lines = [f"# Grid {grid.spec.name or grid.source}", ""]
    for key in dict.fromkeys((r["model"], r["dataset"]) for r in rows):
        lines += [
            f"## {key[0]} on {key[1]}",
            "",
            "| " + " | ".join(c for c, _, _ in SUMMARY_COLUMNS) + " |",
            "|" + "|".join("---" if i < 4 else "---:" for i in range(len(SUMMARY_COLUMNS))) + "|",
        ]
        for row in (r for r in rows if (r["model"], r["dataset"]) == key):
            lines.append("| " + " | ".join(_cell_text(row[f], s) for _, f, s in SUMMARY_COLUMNS) + " |")
        lines.append("")
    failed = [r for r in rows if r["error"]]
    if failed:
        lines += ["## Failed cells", ""] + [f"- {r['cell']}: {r['error']}" for r in failed] + [""]
    return "\n".join(lines)


def write_grid_report(grid: Grid, outcomes: dict[str, CellOutcome], seconds: float) -> Path | None:
    """Write the summary and, when any cell has trained, the papers' tables in ``OUTPUT/report/``."""
    rows = [cell_row(grid, cell, outcomes.get(cell.id)) for cell in grid.cells]
    pretrain = (
        read_stages(pretrained_model_dir(grid.spec).parent).get("pretrain") if grid.spec.pretrain else None
    )
    layout = GridLayout(grid.output_dir)
    write_json_atomic(
        layout.summary_json, {"grid": grid.source, "seconds": seconds, "pretrain": pretrain, "cells": rows}
    )
    write_text_atomic(layout.summary_md, summary_markdown(rows, grid))
    trained = [cell.run_dir for cell in grid.cells if "train" in read_stages(cell.run_dir)]
    if not trained:
        return None
    report_dir = layout.report_dir
    expected = expected_file(grid)
    write_report(
        load_runs(trained, words=grid.spec.evaluation.stats_words),
        report_dir,
        json_summary=True,
        expected=load_expected(expected) if expected else None,
    )
    return report_dir
