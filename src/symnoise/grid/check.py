"""``symnoise grid GRID --check`` and ``--print-commands``: what a grid will run, what it needs, and what is missing.

Nothing is trained or downloaded: the cells and their stages, the stated estimate of GPUs and time per cell
(`symnoise.grid.estimate`), every evaluation input with where it will be read from and whether it is reachable
now, and the training inputs (models, datasets) likewise. ``--print-commands`` gives one command per cell, each
running that cell's training and evaluation (``symnoise grid GRID --cell ID``), for a cluster scheduler.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from ..evaluation import sources
from . import evaluate
from .estimate import estimate_lines
from .spec import Grid
from .stages import planned_stages, read_stages


@dataclass(frozen=True)
class Input:
    """One input of the grid: what it is, where it is read from, and why it cannot be read (None: reachable)."""

    what: str
    where: str
    problem: str | None


def evaluation_inputs(grid: Grid) -> list[Input]:
    """The evaluation inputs: prompts, references, the judge and the leaderboard tasks."""
    spec, rows = grid.spec, []
    folder = evaluate.data_folder(spec)
    for name in ("prompts", "references"):
        value = getattr(spec.evaluation, name)
        if not value:
            continue
        if sources.is_alpaca_eval_name(value):
            resolved = sources.resolve_alpaca_eval(value, folder)
            problem = sources.check_alpaca_eval(value, folder)
            where = resolved.describe()
        else:
            where = f"file {value}"
            missing = not Path(value).is_file()
            problem = f"{value} not found" if missing and spec.evaluation.fallback != "synthetic" else None
            where += " (missing: the synthetic held-out set is used)" if missing and not problem else ""
        if problem and folder is not None and spec.evaluation.fallback == "synthetic":
            where, problem = where + " (missing: the synthetic held-out set is used)", None
        rows.append(Input(f"evaluation.{name}", where, problem))
    judge = spec.evaluation.judge
    if judge is not None:
        model = judge.model or f"${judge.model_env}, else the annotator's"
        what = {
            "openai": f"annotator {judge.annotator} on an OpenAI-compatible server (model {model})",
            "hf": f"local model {judge.model}",
            "alpaca_eval": f"alpaca_eval annotators {judge.annotators}",
        }
        rows.append(Input("evaluation.judge", what[judge.kind], evaluate.judge_problem(judge)))
    section = spec.evaluation.leaderboard
    if section is not None:
        source = evaluate.leaderboard_source(spec)
        problems = sources.check_leaderboard(section.tasks, source)
        rows.append(
            Input(
                "evaluation.leaderboard",
                f"{', '.join(section.tasks)} from {source.describe()}",
                "; ".join(problems) or None,
            )
        )
    return rows


def _probe_path(path: str, repo_type: str) -> tuple[str, str | None]:
    hub = sources.hub_path(path)
    if hub is None:
        return f"local {path}", None if Path(path).exists() else f"{path} not found"
    repo, kind, filename = hub
    kind = repo_type if kind == "?" else kind
    where = f"hub {kind} {repo}" + (f", file {filename}" if filename else "")
    return where, sources.check_hub_repo(repo, kind, filename)


def training_inputs(grid: Grid) -> list[Input]:
    """The models and training datasets of the cells, each probed once."""
    from ..data.mixture import specs_from_section

    rows, seen = [], set()
    for cell in grid.cells:
        specs, eval_spec = specs_from_section(cell.config.data)
        datasets = [
            ("dataset", spec.path, "dataset") for spec in (*specs, *([eval_spec] if eval_spec else []))
        ]
        for what, path, repo_type in (("model", cell.config.model.name, "model"), *datasets):
            if (what, path) in seen or (grid.spec.pretrain and what == "model"):
                continue
            seen.add((what, path))
            if what == "dataset" and cell.dataset == "synthetic":
                rows.append(Input(what, f"synthetic task set, written to {path} when the grid starts", None))
                continue
            where, problem = _probe_path(path, repo_type)
            rows.append(Input(what, where, problem))
    return rows


def check_lines(grid: Grid) -> tuple[list[str], int]:
    """The ``--check`` listing and the number of unreachable inputs."""
    stages = planned_stages(grid)
    lines = [f"{grid.source}: valid, {len(grid.cells)} cells, stages: {', '.join(stages)}"]
    for cell in grid.cells:
        done = [s for s in stages if s in read_stages(cell.run_dir)]
        lines.append(f"  {cell.id}  ({len(done)}/{len(stages)} stages done)")
    lines += estimate_lines(grid)
    unreachable = 0
    for title, inputs in (
        ("evaluation inputs", evaluation_inputs(grid)),
        ("training inputs", training_inputs(grid)),
    ):
        lines.append(f"{title}:")
        for item in inputs:
            status = "ok" if item.problem is None else "UNREACHABLE"
            lines.append(
                f"  {status:<11} {item.what}: {item.where}" + (f": {item.problem}" if item.problem else "")
            )
            unreachable += item.problem is not None
    lines.append(f"{unreachable} input(s) unreachable" if unreachable else "every input is reachable")
    return lines, unreachable


def cell_commands(grid: Grid, grid_file: str, data_dir: str | None = None) -> list[str]:
    """One shell command per cell that trains and evaluates it (its training goes through the grid's launcher);
    a final ``symnoise grid GRID`` afterwards finds every cell finished and writes the report."""
    extra = f" --data-dir {shlex.quote(str(data_dir))}" if data_dir else ""
    return [
        f"symnoise grid {shlex.quote(grid_file)} --cell {shlex.quote(cell.id)}{extra}" for cell in grid.cells
    ]
