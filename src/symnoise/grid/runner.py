"""Running a grid: every cell's stages in order, each finished stage marked on disk, failures recorded.

A cell is the run directory ``OUTPUT/cells/CELL_ID/`` of `symnoise train`, so `symnoise report` reads it as any
other run. Beside the training files it holds::

    cell.yaml              the cell's resolved train config (what `accelerate launch ... train` is given)
    stages.json            one entry per finished stage: when, how long, and what it measured
    model_outputs.json     generations on the evaluation prompts (`symnoise generate`'s format)
    eval/reference_loss.json, eval/stats.json, eval/annotations.json + metrics.json, eval/leaderboard.json
    failure.json           the stage that failed last and its error (removed when the cell later finishes)

Stages: ``train``, then, as configured, ``generate``, ``reference_loss``, ``stats``, ``judge``, ``leaderboard``.
``stages.json`` is rewritten atomically after each stage (`symnoise.grid.stages`), so a kill at any moment leaves
every finished stage marked and nothing else; a re-run skips marked stages (a finished cell costs nothing) and
continues the unfinished one: training from its last checkpoint, generation from its sidecar, judging from its
cache. A cell that raises is recorded in ``failure.json`` and ``OUTPUT/status.json``, and the grid goes on with
the next cell.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..evaluation.reference_loss import reference_loss
from ..files import read_json, write_json_atomic, write_text_atomic
from ..layout import LEADERBOARD, OUTPUT_STATS, REFERENCE_LOSS, RunLayout
from ..train import train
from ..train.config import ConfigError
from ..train.recipe import release_memory
from ..train.reliability import last_complete_checkpoint
from ..train.run_dir import training_began
from ..train.start_record import read_start_record, refuse_training_changes, run_changes
from ..train.trainer import TrainingStopped, clear_stop_request, stop_requested
from . import evaluate, slurm_launch
from .cells import Cell, pretrained_model_dir, synthetic_dir
from .layout import SYNTHETIC_TRAIN, GridLayout
from .sections import GridError, LauncherSection
from .spec import Grid
from .stages import (
    CellOutcome,
    clear_failure,
    evaluation_fingerprint,
    is_finished,
    mark_stage,
    planned_stages,
    read_stages,
    write_failure,
)
from .summary import write_grid_report

# ------------------------------------------------------------------------------------------- staleness


PROCESSES_CHANGE = "processes (WORLD_SIZE)"  # `start_record.run_changes`' name for a changed process count


class StaleCellError(RuntimeError):
    """A cell directory holds stages made with other settings than the grid file now says."""


def check_not_stale(grid: Grid, cell: Cell, done: dict[str, Any]) -> None:
    """Finished stages are reused only when the cell's train config and the evaluation settings are unchanged;
    otherwise the cell fails with a message saying what to do (results are never silently mixed)."""
    path = RunLayout(cell.run_dir).cell_config
    if done.get("train") and path.is_file() and path.read_text(encoding="utf-8") != cell_config_text(cell):
        raise StaleCellError(
            f"{path} differs from this grid's config for the cell, which was trained with the "
            "old one; delete the cell directory to retrain it, or choose another output_dir"
        )
    record = read_start_record(cell.run_dir) if not done.get("train") else None
    if record is not None:  # training started with some config: resuming it with another would mix two runs
        # The number of processes is this process's only when it trains the cell itself; a launcher's processes
        # (accelerate, torchrun across a Slurm allocation) check it against the record when they resume.
        changes = [c for c in run_changes(record, cell.config) if c.field != PROCESSES_CHANGE]
        try:
            refuse_training_changes(changes, cell.run_dir, f"cell {cell.id}")
        except ConfigError as error:
            raise StaleCellError(
                f"{error}; delete the cell directory to retrain it with the grid's config"
            ) from None
    fingerprint = evaluation_fingerprint(grid)
    changed = [
        s for s, info in done.items() if s != "train" and info.get("evaluation") not in (None, fingerprint)
    ]
    if changed:
        raise StaleCellError(
            f"stages {', '.join(changed)} of {cell.run_dir} were made with other evaluation "
            f"settings; remove them from {RunLayout(cell.run_dir).stages} (and their files) to redo "
            "them, or choose another output_dir"
        )


# ------------------------------------------------------------------------------------------------ stages


@dataclass
class CellContext:
    """What the stages of one cell share: the grid, the cell and, loaded once when first needed, the model."""

    grid: Grid
    cell: Cell
    _loaded: tuple | None = None

    def model_and_tokenizer(self):
        from ..generation import load_model_and_tokenizer

        if self._loaded is None:
            decoding = self.grid.spec.evaluation.decoding
            self._loaded = load_model_and_tokenizer(self.cell.run_dir, decoding.device, decoding.dtype)
        return self._loaded

    @property
    def template(self) -> str:
        from ..generation import resolve_template

        return resolve_template(self.cell.run_dir, None)


def accelerate_command(
    launcher: LauncherSection, cell_config: Path, resume: bool, overwrite: bool = False
) -> list[str]:
    """``accelerate launch --config_file F [--num_processes N] -m symnoise train CELL.yaml [--resume]``."""
    command = [launcher.executable, "launch", "--config_file", str(launcher.config_file)]
    if launcher.num_processes:
        command += ["--num_processes", str(launcher.num_processes)]
    command += ["-m", "symnoise", "train", str(cell_config)]
    return command + (["--resume"] if resume else []) + (["--overwrite"] if overwrite else [])


def _train_finished(run_dir: Path) -> dict | None:
    path = RunLayout(run_dir).summary
    summary = read_json(path) if path.is_file() else {}
    return summary if summary.get("finished") else None


def stage_train(ctx: CellContext) -> dict:
    """Train the cell (resuming from its last checkpoint if an earlier attempt left one)."""
    run_dir = ctx.cell.run_dir
    finished = _train_finished(run_dir)
    if finished is None:
        # An earlier attempt with a checkpoint is resumed; one without is started again (its files deleted).
        # Either way `check_not_stale` has already compared its start config with the cell's.
        resume = last_complete_checkpoint(run_dir) is not None
        overwrite = not resume and run_dir.is_dir() and training_began(run_dir)
        launcher = ctx.grid.spec.launcher
        if launcher.kind == "accelerate":
            command = accelerate_command(launcher, RunLayout(run_dir).cell_config, resume, overwrite)
            result = subprocess.run(command, check=False)
            if result.returncode != 0:
                raise RuntimeError(f"`{' '.join(command)}` exited with status {result.returncode}")
        elif launcher.kind == "slurm" and not slurm_launch.trains_in_process(launcher, launcher.config_file):
            train_across_allocation(ctx, resume, overwrite)
        else:  # in this process: `train` frees its Trainer, model and optimizer before generation loads a model
            train(ctx.cell.config, resume=resume, overwrite=overwrite)
        finished = _train_finished(run_dir)
        if finished is None:
            raise RuntimeError(f"training ended without writing {RunLayout(run_dir).summary}")
    return {"steps": finished.get("steps"), "final_loss": finished.get("final_loss")}


def train_across_allocation(ctx: CellContext, resume: bool, overwrite: bool) -> None:
    """Train the cell with one process per GPU over the Slurm job's nodes (`symnoise.grid.slurm_launch`); a
    preemption notice is passed on to the training processes, which checkpoint and stop (`TrainingStopped`)."""
    launcher, run_dir = ctx.grid.spec.launcher, ctx.cell.run_dir
    command = slurm_launch.cell_training_command(
        launcher,
        launcher.config_file,
        launcher.executable,
        RunLayout(run_dir).cell_config,
        resume,
        overwrite,
        os.environ,
    )
    status = slurm_launch.run_passing_notice(command)
    checkpoint = last_complete_checkpoint(run_dir)
    if status != 0 and stop_requested() and checkpoint is not None:
        clear_stop_request()
        raise TrainingStopped(f"training stopped on a preemption notice; {checkpoint} holds the run")
    if status != 0:
        raise RuntimeError(f"`{' '.join(command)}` exited with status {status}")


def stage_generate(ctx: CellContext) -> dict:
    from ..generation import generate_outputs, model_outputs_records, sidecar_path

    settings = ctx.grid.spec.evaluation.decoding.settings()
    prompts = evaluate.evaluation_prompts(ctx.grid.spec)
    model, tokenizer = ctx.model_and_tokenizer()
    output = RunLayout(ctx.cell.run_dir).outputs
    outputs, stats = generate_outputs(
        model, tokenizer, prompts, ctx.template, settings, sidecar_path(output), ctx.cell.id, progress=False
    )
    write_json_atomic(output, model_outputs_records(prompts, outputs, ctx.cell.id))
    sidecar_path(output).unlink(missing_ok=True)  # progress file: everything is in the output now
    return {
        "prompts": len(prompts),
        "prompts_file": str(evaluate.evaluation_file(ctx.grid.spec, "prompts")),
        "new_tokens": stats.new_tokens,
        "tokens_per_s": stats.tokens_per_second,
    }


def stage_reference_loss(ctx: CellContext) -> dict:
    examples = evaluate.reference_examples(ctx.grid.spec, evaluate.evaluation_prompts(ctx.grid.spec))
    model, tokenizer = ctx.model_and_tokenizer()
    result = reference_loss(model, tokenizer, examples, ctx.template, ctx.cell.config.data.max_length)
    write_json_atomic(RunLayout(ctx.cell.run_dir).eval_dir / REFERENCE_LOSS, result)
    return {k: v for k, v in result.items() if k != "per_example"}  # the per-prompt losses stay in eval/ only


def stage_stats(ctx: CellContext) -> dict:
    from ..evaluation.stats import WORDS_PER_DATASET, load_outputs, output_stats

    words = ctx.grid.spec.evaluation.stats_words or WORDS_PER_DATASET.get(ctx.cell.config.data.format, 50)
    run = RunLayout(ctx.cell.run_dir)
    outputs, generators = load_outputs(run.outputs)
    result = output_stats(outputs, words, str(run.outputs), generators).to_dict()
    write_json_atomic(run.eval_dir / OUTPUT_STATS, result)
    return {
        k: result[k] for k in ("mean_chars", "mean_words", "words", "n_kept", "rep_2_pct", "log_diversity")
    }


def stage_analyze(ctx: CellContext) -> dict:
    """`symnoise analyze` at the cell's final model: training examples from its data, held-out examples from the
    evaluation references when the grid has them; files in ``RUN/analysis/``."""
    from ..analysis.analyze import Settings, run_analysis
    from ..analysis.inputs import DataSources
    from ..analysis.output import write_analysis

    section = ctx.grid.spec.evaluation.analyze
    data = ctx.cell.config.data
    if data.path is None:
        raise RuntimeError("the analyze stage reads the cell's data.path; a mixture (data.datasets) has none")
    references = ctx.grid.spec.evaluation.references
    heldout = evaluate.evaluation_file(ctx.grid.spec, "references") if references else None
    settings = Settings(
        examples=section.examples,
        draws=section.draws,
        probes=section.probes,
        alphas=tuple(section.alphas),
        batch_size=section.batch_size,
        seed=section.seed,
        device=ctx.grid.spec.evaluation.decoding.device,
    )
    sources = DataSources(  # the training file as the cell reads it: its limit and its bad-row policy
        Path(data.path), Path(heldout) if heldout else None, section.examples, data.limit, data.on_bad_row
    )
    analysis = run_analysis([ctx.cell.run_dir], sources, settings, log=lambda text: None)
    write_analysis(analysis, RunLayout(ctx.cell.run_dir).analysis)
    run = analysis["runs"][0]
    return {"antithetic_ratio": run["antithetic_ratio"], "heldout_gap": run["losses"]["gap"]}


def stage_judge(ctx: CellContext) -> dict:
    from ..evaluation.judge import judge_outputs

    section = ctx.grid.spec.evaluation.judge
    annotator = evaluate.judge_annotator(section)
    run = RunLayout(ctx.cell.run_dir)
    result = judge_outputs(
        run.outputs,
        evaluate.evaluation_file(ctx.grid.spec, "references"),
        evaluate.build_judge(section, annotator),
        run.eval_dir,
        annotator=annotator,
        seed=section.seed,
        limit=section.limit,
        workers=section.workers if section.kind == "openai" else 1,
    )
    return {k: result.metrics[k] for k in ("win_rate", "standard_error", "n_total", "n_null")}


def stage_leaderboard(ctx: CellContext) -> dict:
    from ..evaluation.leaderboard import run_leaderboard

    section = ctx.grid.spec.evaluation.leaderboard
    source = evaluate.leaderboard_source(ctx.grid.spec)
    report = run_leaderboard(
        str(ctx.cell.run_dir),
        section.tasks,
        data_dir=source.data_dir,
        online=source.online,
        limit=section.limit,
        batch_size=section.batch_size,
    )
    write_json_atomic(RunLayout(ctx.cell.run_dir).eval_dir / LEADERBOARD, report)
    return {"average": report["average"]}


STAGE_FUNCTIONS: dict[str, Callable[[CellContext], dict]] = {
    "train": stage_train,
    "generate": stage_generate,
    "reference_loss": stage_reference_loss,
    "stats": stage_stats,
    "analyze": stage_analyze,
    "judge": stage_judge,
    "leaderboard": stage_leaderboard,
}


# ------------------------------------------------------------------------------------------------- cells


def cell_config_text(cell: Cell) -> str:
    """The cell's resolved train config as ``cell.yaml`` holds it."""
    return yaml.safe_dump(cell.config.to_dict(), sort_keys=False)


def write_cell_config(cell: Cell) -> None:
    """Write ``cell.yaml`` (left untouched when it already holds the same config)."""
    cell.run_dir.mkdir(parents=True, exist_ok=True)
    text = cell_config_text(cell)
    path = RunLayout(cell.run_dir).cell_config
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        write_text_atomic(path, text)


def run_cell(grid: Grid, cell: Cell, log: Callable[[str], None] = print) -> CellOutcome:
    """Run the cell's unfinished stages; an exception is recorded in ``failure.json`` and returned, not raised."""
    outcome = CellOutcome(cell.id, "finished")
    done = read_stages(cell.run_dir)
    ctx = CellContext(grid, cell)
    stage = None
    try:
        check_not_stale(grid, cell, done)
        write_cell_config(cell)
        for stage in planned_stages(grid):
            if stage in done:
                outcome.skipped.append(stage)
                continue
            if stop_requested():  # a preemption notice came after the last stage: stop before the next
                clear_stop_request()
                raise TrainingStopped(f"stopped before stage {stage} on a preemption notice")
            log(f"[{cell.id}] {stage}")
            started = time.perf_counter()
            info = STAGE_FUNCTIONS[stage](ctx)
            if stage != "train":
                info["evaluation"] = evaluation_fingerprint(grid)
            mark_stage(cell.run_dir, stage, info, time.perf_counter() - started)
            outcome.ran.append(stage)
    except TrainingStopped:  # preempted: not a failure; the caller requeues or stops
        raise
    except Exception as error:  # a failed cell must not stop the grid; KeyboardInterrupt still does
        outcome.status, outcome.stage, outcome.error = "failed", stage, f"{type(error).__name__}: {error}"
        write_failure(cell.run_dir, stage, outcome.error, traceback.format_exc())
        log(f"[{cell.id}] FAILED in {stage}: {outcome.error}")
    else:
        clear_failure(cell.run_dir)
    finally:
        ctx._loaded = None
        release_memory()  # the evaluation model, and a failed stage's leftovers, before the next cell
    return outcome


# -------------------------------------------------------------------------------------------------- grid


@dataclass
class GridOutcome:
    cells: list[CellOutcome]
    report_dir: Path | None
    seconds: float

    @property
    def failed(self) -> list[CellOutcome]:
        return [c for c in self.cells if c.status == "failed"]


def write_status(grid: Grid, outcomes: dict[str, CellOutcome]) -> None:
    """``OUTPUT/status.json``: every cell with its status (pending, finished, failed), stages and error."""
    rows = []
    for cell in grid.cells:
        outcome = outcomes.get(cell.id)
        status = outcome.status if outcome else ("finished" if is_finished(grid, cell) else "pending")
        rows.append(
            {
                "cell": cell.id,
                "status": status,
                "run_dir": str(cell.run_dir),
                "stages": sorted(read_stages(cell.run_dir)),
                "error": outcome.error if outcome else None,
                "failed_stage": outcome.stage if outcome else None,
            }
        )
    write_json_atomic(GridLayout(grid.output_dir).status, {"grid": grid.source, "cells": rows})


def run_pretrain(grid: Grid, log: Callable[[str], None]) -> None:
    """The `pretrain` section's model, trained once (marked in ``OUTPUT/pretrain/stages.json``)."""
    from .pretrain import pretrain

    folder = pretrained_model_dir(grid.spec).parent
    if "pretrain" in read_stages(folder):
        return
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    synthetic = synthetic_dir(grid.spec) / SYNTHETIC_TRAIN
    info = pretrain(grid.spec.pretrain, pretrained_model_dir(grid.spec), synthetic, log)
    mark_stage(folder, "pretrain", info, time.perf_counter() - started)


def check_inputs(grid: Grid) -> None:
    """Raise `GridError` listing every evaluation input that cannot be read, before anything is trained."""
    problems = evaluate.unreachable_inputs(grid.spec)
    if problems:
        raise GridError(
            "\n".join(
                [f"{grid.source}: evaluation inputs not reachable (nothing was trained):"]
                + [f"  {p}" for p in problems]
            )
        )


def prepare(grid: Grid, log: Callable[[str], None]) -> None:
    """Everything the cells share: the output folder, the grid file, the synthetic data and the pretrained model,
    after checking that every evaluation input is reachable."""
    check_inputs(grid)
    grid.output_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(GridLayout(grid.output_dir).grid_file, grid.spec.model_dump(mode="json"))
    if evaluate.needs_synthetic(grid.spec):
        evaluate.write_synthetic_world(grid.spec)
    if grid.spec.pretrain:
        run_pretrain(grid, log)


def run_grid(grid: Grid, log: Callable[[str], None] = print, only: str | None = None) -> GridOutcome:
    """Run every cell (or only the cell with the id ``only``, as a cluster job does) one after another, then write
    the report over all cells that finished training."""
    cells = [c for c in grid.cells if only is None or c.id == only]
    if not cells:
        raise GridError(
            f"{grid.source}: no cell {only!r}; `symnoise grid {grid.source} --check` lists the cells"
        )
    started = time.perf_counter()
    prepare(grid, log)
    outcomes: dict[str, CellOutcome] = {}
    for number, cell in enumerate(cells, start=1):
        log(f"cell {number}/{len(cells)}: {cell.id}")
        outcomes[cell.id] = run_cell(grid, cell, log)
        write_status(grid, outcomes)
        sys.stdout.flush()
    # A single cell is a cluster job running beside others: the report is left to a final `symnoise grid GRID`.
    report_dir = None if only else write_grid_report(grid, outcomes, time.perf_counter() - started)
    return GridOutcome(list(outcomes.values()), report_dir, time.perf_counter() - started)
