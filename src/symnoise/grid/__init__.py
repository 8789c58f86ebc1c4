"""`symnoise grid`: a matrix of (model, dataset, method, alpha, seed) training runs, each evaluated, then reported.

`load_grid` reads and validates a grid file (`symnoise.grid.spec`), `run_grid` runs its cells one after another,
resumably (`symnoise.grid.runner`), and writes the report (`symnoise.grid.summary`).
"""

from .runner import (
    CellOutcome,
    GridOutcome,
    accelerate_command,
    planned_stages,
    read_stages,
    run_cell,
    run_grid,
)
from .spec import Cell, Grid, GridError, GridSpec, load_grid, validate_grid

__all__ = [
    "Cell",
    "CellOutcome",
    "Grid",
    "GridError",
    "GridOutcome",
    "GridSpec",
    "accelerate_command",
    "load_grid",
    "planned_stages",
    "read_stages",
    "run_cell",
    "run_grid",
    "validate_grid",
]
