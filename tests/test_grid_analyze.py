"""The grid's analyze stage: `symnoise analyze` at each cell's final model, and the report's Mechanism table."""

from __future__ import annotations

import json
import math

import pytest
from test_grid import tiny_grid

from symnoise.grid import read_stages, run_grid, validate_grid
from symnoise.grid.sections import AnalyzeSection
from symnoise.layout import RunLayout

pytestmark = pytest.mark.slow  # multi-process, subprocess or whole-pipeline tests: `make test` only


def test_each_cell_is_analysed_and_the_report_shows_it(tmp_path):
    data = tiny_grid(tmp_path, methods=("neftune", "symnoise"))
    data["evaluation"]["analyze"] = {"examples": 4, "draws": 4, "probes": 2, "alphas": [5], "batch_size": 4}
    grid = validate_grid(data)
    outcome = run_grid(grid, log=lambda line: None)
    assert all(o.error is None for o in outcome.cells), [o.error for o in outcome.cells]
    for cell in grid.cells:
        assert "analyze" in read_stages(cell.run_dir)
        analysis = json.loads((RunLayout(cell.run_dir).analysis / "analysis.json").read_text())
        run = analysis["runs"][0]
        assert run["method"] == cell.config.noise.method and run["alpha"] == 5.0
        assert math.isfinite(run["antithetic_ratio"]) and run["antithetic_ratio"] > 0
        assert "heldout" in run["splits"] and str(tmp_path / "prompts.jsonl") in analysis["data"]["heldout"]
    report = (tmp_path / "grid" / "report" / "report.md").read_text()
    assert "## Mechanism (symnoise analyze, training examples, noise off)" in report
    rows = [line for line in report.split("## Mechanism", 1)[1].splitlines() if line.startswith("| tiny")]
    assert len(rows) == 2


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"draws": 5}, "must be even"),
        ({"draws": 2}, "greater than or equal to 4"),
        ({"alphas": [0]}, "positive"),
    ],
)
def test_bad_analyze_sections_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        AnalyzeSection(**fields)
