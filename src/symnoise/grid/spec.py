"""Loading a grid file of `symnoise grid` and checking it completely before anything is trained.

The grid file's sections are `symnoise.grid.sections`; how its axes become cells, each with a validated train
config, is `symnoise.grid.cells`. `load_grid` / `validate_grid` check the fields, the local files the grid
names, and every cell's train config, and return a `Grid`; a problem raises `GridError` naming the file and the
field.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..data.readers import FILE_SUFFIXES
from ..evaluation.sources import is_alpaca_eval_name
from .cells import Cell, expand_cells, pretrained_model_dir, read_yaml
from .sections import GridError, GridSpec


@dataclass(frozen=True)
class Grid:
    """A validated grid: the spec, where it came from, and every cell."""

    spec: GridSpec
    source: str
    cells: list[Cell]

    @property
    def output_dir(self) -> Path:
        return Path(self.spec.output_dir)


def _format_errors(error: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid grid"]
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = (
            "unknown field"
            if item["type"] == "extra_forbidden"
            else item["msg"].removeprefix("Value error, ")
        )
        lines.append(f"  {where}: {message}")
    return "\n".join(lines)


def _check_files(spec: GridSpec, source: str) -> None:
    """Local files the grid names must exist, unless a synthetic fallback is configured for them."""
    problems = []
    evaluation = spec.evaluation
    for name in ("prompts", "references"):
        value = getattr(evaluation, name)
        if value and not is_alpaca_eval_name(value) and not Path(value).is_file() and not evaluation.fallback:
            problems.append(f"evaluation.{name}: {value} not found")
    for i, dataset in enumerate(spec.axes.dataset):
        remote = dataset.path.startswith("hf://")
        local = not remote and (dataset.path.endswith(FILE_SUFFIXES) or Path(dataset.path).exists())
        if local and not Path(dataset.path).is_file() and not dataset.fallback:
            problems.append(f"axes.dataset.{i}.path: {dataset.path} not found")
    if spec.launcher.config_file and not Path(spec.launcher.config_file).is_file():
        problems.append(f"launcher.config_file: {spec.launcher.config_file} not found")
    if (
        spec.pretrain
        and spec.pretrain.text
        and not Path(spec.pretrain.text).is_file()
        and not spec.pretrain.fallback
    ):
        problems.append(f"pretrain.text: {spec.pretrain.text} not found")
    if problems:
        raise GridError("\n".join([f"{source}: invalid grid"] + [f"  {p}" for p in problems]))


def validate_grid(data: Any, source: str = "grid") -> Grid:
    """Check a grid mapping completely (fields, files, every cell's train config); raises `GridError`."""
    if not isinstance(data, dict):
        raise GridError(f"{source}: the top level must be a mapping with output_dir, base, axes, evaluation")
    try:
        spec = GridSpec.model_validate(data)
    except ValidationError as error:
        raise GridError(_format_errors(error, source)) from None
    _check_files(spec, source)
    pretrained = pretrained_model_dir(spec) if spec.pretrain else None
    return Grid(spec, source, expand_cells(spec, source, pretrained))


def load_grid(path: str | Path, data_dir: str | Path | None = None) -> Grid:
    """Read and validate a grid YAML file; ``data_dir`` (the ``--data-dir`` flag) replaces evaluation.data_dir."""
    path = Path(path)
    data = read_yaml(path, "grid file")
    if data_dir is not None and isinstance(data, dict):
        data.setdefault("evaluation", {})["data_dir"] = str(data_dir)
    return validate_grid(data, source=str(path))


def expected_file(grid: Grid) -> Path | None:
    """The grid's companion file of the papers' numbers: ``expected``, else GRID.expected.yaml if it exists."""
    if grid.spec.expected:
        return Path(grid.spec.expected)
    source = Path(grid.source)
    beside = source.with_name(source.stem + ".expected.yaml")
    return beside if source.suffix in (".yaml", ".yml") and beside.is_file() else None
