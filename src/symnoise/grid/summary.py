"""The grid's results: `symnoise report` over every trained cell, and a one-row-per-cell summary table.

``OUTPUT/report/`` holds the papers' tables (`symnoise.evaluation.report.write_report`, with ``report.json``).
``OUTPUT/summary.md`` and ``summary.json`` add what those tables do not show: each cell's status, its held-out
reference loss, and the failure of a failed cell. Where a method has several seeds, the seed axis is aggregated
too: per (model, dataset, method, alpha), each metric's mean ± half-width of its 95% t-interval over the seeds
(`symnoise.evaluation.paired.seed_summary`), and the comparisons between methods
(`symnoise.evaluation.comparisons`: paired over prompts per seed, and over seeds); with one seed per method the
summary says in words that intervals over seeds are undefined.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..evaluation.comparisons import Comparisons, build_comparisons
from ..evaluation.expected import load_expected
from ..evaluation.paired import seed_summary
from ..evaluation.report import write_report
from ..evaluation.runs import ReportError, load_runs
from ..evaluation.tables import comparisons_per_seed_table, comparisons_table, mean_and_interval
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


SEED_METRICS = (
    ("final train loss", "final_loss", 3),
    ("held-out ref. loss", "reference_loss", 3),
    ("mean chars", "mean_chars", 1),
    ("2-gram rep. %", "rep_2_pct", 2),
    ("win rate", "win_rate", 2),
)
SEED_KEYS = frozenset(key for _, key, _ in SEED_METRICS)
ONE_SEED_NOTE = (
    "One seed per method: the intervals over seeds are undefined, so no difference between methods is shown beyond "
    "the seed trained; add seeds (axes.seed) to see seed-to-seed variation."
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


def seed_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The seed axis aggregated: one row per (model, dataset, method, alpha) with its seeds and, per metric, the
    `SeedSummary` of the cells that have it (None where none has)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["dataset"], row["method"], row["alpha"]), []).append(row)
    aggregated = []
    for (model, dataset, method, alpha), cells in groups.items():
        entry = {"model": model, "dataset": dataset, "method": method, "alpha": alpha,
                 "seeds": [c["seed"] for c in cells]}  # fmt: skip
        for _, key, _ in SEED_METRICS:
            values = [c[key] for c in cells if c[key] is not None]
            entry[key] = seed_summary(values) if values else None
        aggregated.append(entry)
    return aggregated


def seed_json(aggregated: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """:func:`seed_rows` for summary.json: each summary as mean, sd, ci_low, ci_high, n and note."""
    return [
        {k: ({**v._asdict(), "note": v.note} if k in SEED_KEYS and v else v) for k, v in row.items()}
        for row in aggregated
    ]


def seed_markdown(aggregated: list[dict[str, Any]]) -> list[str]:
    """The "Over seeds" section: a table when some method has several seeds, else the one-seed sentence."""
    lines = ["## Over seeds", ""]
    if all(len(row["seeds"]) < 2 for row in aggregated):
        return lines + [ONE_SEED_NOTE, ""]
    header = ["model", "dataset", "method", "alpha", "seeds"] + [title for title, _, _ in SEED_METRICS]
    lines += [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i < 3 else "---:" for i in range(len(header))) + "|",
    ]
    for row in aggregated:
        cells = [row["model"], row["dataset"], row["method"], _cell_text(row["alpha"], "g"),
                 ", ".join(map(str, row["seeds"]))]  # fmt: skip
        cells += [mean_and_interval(row[key], digits) for _, key, digits in SEED_METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    note = "mean ± half-width of the 95% t-interval over seeds (number of seeds with the metric)"
    if any(len(row["seeds"]) < 2 for row in aggregated):
        note += "; a method with one seed has no interval over seeds"
    return lines + ["", f"Note: {note}", ""]


def comparisons_markdown(paired: Comparisons | None, problem: str | None) -> list[str]:
    """The comparisons between methods (see `symnoise.evaluation.comparisons`), or why there are none."""
    if problem:
        return ["## Comparisons", "", f"Not computed: {problem}", ""]
    tables = (
        [t for t in (comparisons_table(paired), comparisons_per_seed_table(paired)) if t] if paired else []
    )
    if not tables:
        return ["## Comparisons", "", "No two methods of one dataset have a metric in common yet.", ""]
    return [part for t in tables for part in (t.to_markdown(), "")]


def write_grid_report(grid: Grid, outcomes: dict[str, CellOutcome], seconds: float) -> Path | None:
    """Write the summary and, when any cell has trained, the papers' tables in ``OUTPUT/report/``."""
    rows = [cell_row(grid, cell, outcomes.get(cell.id)) for cell in grid.cells]
    pretrain = (
        read_stages(pretrained_model_dir(grid.spec).parent).get("pretrain") if grid.spec.pretrain else None
    )
    trained = [cell for cell in grid.cells if "train" in read_stages(cell.run_dir)]
    runs, paired, problem = [], None, None
    try:
        runs = (
            load_runs([c.run_dir for c in trained], words=grid.spec.evaluation.stats_words) if trained else []
        )
        paired = build_comparisons(runs, {c.run_dir: c.seed for c in trained})
    except ReportError as error:  # the summary is still written; the report below fails with the same error
        problem = str(error)
    aggregated = seed_rows(rows)
    layout = GridLayout(grid.output_dir)
    write_json_atomic(
        layout.summary_json,
        {"grid": grid.source, "seconds": seconds, "pretrain": pretrain, "cells": rows, "seeds": seed_json(aggregated),
         "comparisons": paired.to_dict() if paired else {"rows": [], "notes": [problem] if problem else []}},
    )  # fmt: skip
    markdown = "\n".join(
        [summary_markdown(rows, grid)] + seed_markdown(aggregated) + comparisons_markdown(paired, problem)
    )
    write_text_atomic(layout.summary_md, markdown)
    if not trained:
        return None
    report_dir = layout.report_dir
    expected = expected_file(grid)
    write_report(
        runs or load_runs([c.run_dir for c in trained], words=grid.spec.evaluation.stats_words),
        report_dir,
        json_summary=True,
        expected=load_expected(expected) if expected else None,
        paired=paired,
    )
    return report_dir
