"""`symnoise grid`: a matrix of (model, dataset, method, alpha, seed) training runs, each evaluated, then reported.

`load_grid` reads and validates a grid file (`symnoise.grid.spec`), `run_grid` runs its cells one after another,
resumably (`symnoise.grid.runner`, each cell's finished stages kept by `symnoise.grid.stages`), and writes the
report (`symnoise.grid.summary`).
"""

from .cells import Cell
from .runner import GridOutcome, accelerate_command, run_cell, run_grid
from .sections import GridError, GridSpec
from .spec import Grid, load_grid, validate_grid
from .stages import CellOutcome, planned_stages, read_stages

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
