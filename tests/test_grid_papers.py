"""The shipped paper grids against the papers' tables: each expands to the table's cell count, every number of its
companion expected file is the result of exactly one cell and every cell feeds a number, with the papers' models,
alphas, decoding and judge; `--check` and `--print-commands` from the outside, and a grid whose evaluation data
cannot be reached stops before anything is trained."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml
from conftest import REPO_ROOT
from test_grid import tiny_grid

from symnoise.evaluation.expected import find_run, load_expected, merge_keys
from symnoise.evaluation.runs import Run, TrainMetrics
from symnoise.grid import GridError, load_grid, run_grid, validate_grid

pytestmark = pytest.mark.slow  # multi-process, subprocess or whole-pipeline tests: `make test` only

GRIDS = REPO_ROOT / "configs" / "grid"
# grid -> (cells the tables need, judge annotators; None: no judge)
PAPER_GRIDS = {
    "paper-table1.yaml": (16, "alpaca_eval_gpt4"),  # 4 methods x 4 datasets
    "paper-table2.yaml": (36, "chatgpt_fn"),  # 3 models x 4 datasets x 3 methods
    "paper-table3.yaml": (9, None),  # 3 (model, dataset) blocks x 3 methods, leaderboard only
    "paper-table4.yaml": (30, "chatgpt_fn"),  # 10 settings x 3 datasets
    "paper-table5.yaml": (9, None),  # 3 methods x 3 datasets, lengths and repetition only
    "neftune-chat.yaml": (2, "alpaca_eval_gpt4"),  # Evol-Instruct, +NEFT
    "neftune-qlora.yaml": (16, "chatgpt_fn"),  # 2 models x 2 datasets x (base + 3 alphas)
}
PAPER_ALPHA = {"alpaca": 5, "evol-instruct": 5, "sharegpt": 10, "openplatypus": 15}


def cell_run(cell) -> Run:
    """The run a cell will become, as the report labels it."""
    return Run(
        path=cell.run_dir,
        noise=cell.config.noise,
        dataset=cell.config.data.format,
        model=cell.config.model.name,
        train=TrainMetrics(),
    )


def test_every_paper_grid_has_a_grid_file_and_an_expected_file():
    shipped = {p.name for p in GRIDS.glob("*.yaml") if not p.name.endswith(".expected.yaml")}
    assert set(PAPER_GRIDS) <= shipped
    for name in PAPER_GRIDS:
        assert (GRIDS / name.replace(".yaml", ".expected.yaml")).is_file()


@pytest.mark.parametrize("name", PAPER_GRIDS)
def test_paper_grid_cells_are_the_tables_cells(name, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    grid = load_grid(GRIDS / name)
    count, annotators = PAPER_GRIDS[name]
    assert len(grid.cells) == count
    runs = [cell_run(c) for c in grid.cells]
    expected = load_expected(GRIDS / name.replace(".yaml", ".expected.yaml"))
    used = set()
    for table in expected.tables:
        for row in (r for r in table.rows if r.reproduce):
            for column, value in zip(table.columns, row.values, strict=True):
                key = merge_keys(table.key, row, column)
                keyed = {k: v for k, v in key.items() if k != "metric"}
                run = find_run(runs, keyed)
                assert run is not None, f"{name}: no cell for {table.title} / {row.label} / {column.label}"
                assert value is not None
                same = [r for r in runs if find_run([r], keyed)]
                assert len(same) == 1, f"{name}: {row.label} / {column.label} matches {len(same)} cells"
                used.add(run.path)
    assert used == {r.path for r in runs}, (
        f"{name}: cells no table shows: {sorted({r.path for r in runs} - used)}"
    )
    judge = grid.spec.evaluation.judge  # the annotator through symnoise's cached, resumable client
    assert (judge and (judge.kind, judge.annotator)) == (annotators and ("openai", annotators))
    if grid.spec.evaluation.prompts:
        assert grid.spec.evaluation.prompts == "alpaca_eval" and grid.spec.evaluation.data_dir is None
        decoding = grid.spec.evaluation.decoding
        assert (decoding.max_length, decoding.repetition_penalty) == (1024, 1.2)  # NEFTune's greedy decoding
    if annotators:
        assert grid.spec.evaluation.references == "alpaca_eval"  # text-davinci-003, AlpacaEval 1
    if name not in (
        "paper-table4.yaml",
        "neftune-qlora.yaml",
    ):  # the alpha ablations' variants carry their alpha
        assert all(cell.alpha in (0.0, PAPER_ALPHA[cell.dataset]) for cell in grid.cells)


def test_paper_grids_use_the_papers_models_and_protocols(monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    table2 = load_grid(GRIDS / "paper-table2.yaml")
    assert {c.config.model.name for c in table2.cells} == {
        "facebook/opt-6.7b",
        "huggyllama/llama-7b",
        "meta-llama/Llama-2-7b-hf",
    }
    table3 = load_grid(GRIDS / "paper-table3.yaml")
    assert {(c.model, c.dataset) for c in table3.cells} == {
        ("llama2-7b", "alpaca"),
        ("llama2-7b", "openplatypus"),
        ("llama1-7b", "evol-instruct"),
    }
    assert table3.spec.evaluation.leaderboard.tasks == ["arc", "hellaswag", "mmlu"]
    for cell in load_grid(GRIDS / "paper-table1.yaml").cells:  # NEFTune's full fine-tuning protocol
        t = cell.config.training
        assert (t.learning_rate, t.epochs, t.effective_batch_size, cell.config.data.max_length) == (
            5e-5,
            3,
            128,
            512,
        )
    chat = load_grid(GRIDS / "neftune-chat.yaml")
    assert [(c.config.model.name, c.config.noise.method, c.alpha) for c in chat.cells] == [
        ("meta-llama/Llama-2-7b-chat-hf", "none", 0.0),
        ("meta-llama/Llama-2-7b-chat-hf", "uniform", 5.0),
    ]
    qlora = load_grid(GRIDS / "neftune-qlora.yaml")
    for cell in qlora.cells:  # QLoRA's defaults for 7B/13B, one epoch (NEFTune Sec. 4)
        lora, t = cell.config.lora, cell.config.training
        assert (lora.enabled, lora.quantize_4bit, lora.r, lora.alpha, lora.dropout) == (
            True,
            True,
            64,
            16,
            0.1,
        )
        assert (t.epochs, t.learning_rate, t.effective_batch_size, t.max_grad_norm) == (1, 2e-4, 16, 0.3)
    assert {(c.model, c.alpha) for c in qlora.cells if c.dataset == "alpaca"} == {
        (m, a) for m in ("llama2-7b", "llama2-13b") for a in (0.0, 5.0, 10.0, 15.0)
    }


def test_pairs_must_name_axes_entries(tmp_path):
    data = tiny_grid(tmp_path)
    data["axes"]["pairs"] = [["tiny-llama", "nope"]]
    data["axes"]["model"] = []
    with pytest.raises(GridError, match=r"axes.pairs.0: \[tiny-llama, nope\] must name a model"):
        validate_grid(data, "g.yaml")


def test_check_lists_cells_estimates_and_unreachable_inputs(shared_data, tmp_path):
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "OPENAI_API_KEY",
            "OPENAI_API_KEYS",
            "OPENAI_BASE_URL",
            "OPENAI_CLIENT_CONFIG_PATH",
            "SYMNOISE_JUDGE_API_KEY",
            "SYMNOISE_JUDGE_BASE_URL",
        )
    }
    env.update(
        HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "empty-cache"), SYMNOISE_DATA_DIR=str(shared_data)
    )
    result = subprocess.run(
        [sys.executable, "-m", "symnoise", "grid", "configs/grid/paper-table1.yaml", "--check"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    lines = result.stdout.splitlines()
    assert result.returncode == 1, result.stderr
    assert (
        lines[0] == "configs/grid/paper-table1.yaml: valid, 16 cells, stages: train, generate, stats, judge"
    )
    row = next(
        line for line in lines if line.strip().startswith("llama2-7b-alpaca-symnoise-a5-s42") and "B" in line
    )
    # 52,002 examples x 3 epochs x 160 tokens x 2 (the symmetric pair) = 49.9M tokens; (6 + 2) x 6.74e9 x tokens
    # at 40 % of 312 TFLOP/s = 5.99 GPU-hours; 16 bytes x 6.74e9 over 64 usable GB = 2 GPUs
    assert row.split()[1:6] == ["6.74B", "52002", "49.9M", "2", "5.99"]
    ae = shared_data / "alpaca_eval/alpaca_eval_ae1_reference_text_davinci_003.jsonl"
    assert f"  ok          evaluation.prompts: alpaca_eval: local file {ae}" in lines
    assert (
        "  UNREACHABLE evaluation.judge: annotator alpaca_eval_gpt4 on an OpenAI-compatible server (model "
        "$SYMNOISE_JUDGE_MODEL, else the annotator's): evaluation.judge: https://api.openai.com/v1 needs a key in "
        "$SYMNOISE_JUDGE_API_KEY or $OPENAI_API_KEY"
    ) in lines
    assert (
        "  UNREACHABLE model: hub model meta-llama/Llama-2-7b-hf: HF_HUB_OFFLINE is set and the repository is "
        "not in the hub cache"
    ) in lines
    assert lines[-1] == "6 input(s) unreachable"  # the judge, the model and the 4 training datasets

    commands = subprocess.run(
        [sys.executable, "-m", "symnoise", "grid", "configs/grid/paper-table1.yaml", "--print-commands"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    grid_cells = [c.id for c in load_grid(REPO_ROOT / "configs/grid/paper-table1.yaml").cells]
    assert commands == [f"symnoise grid configs/grid/paper-table1.yaml --cell {c}" for c in grid_cells]


def test_unreachable_evaluation_data_stops_the_grid_before_training(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("SYMNOISE_DATA_DIR", raising=False)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    data = tiny_grid(tmp_path)
    data["evaluation"]["prompts"] = "alpaca_eval"  # the hub file, which offline mode cannot fetch
    grid_file = tmp_path / "g.yaml"
    grid_file.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(GridError) as error:
        run_grid(load_grid(grid_file), log=lambda line: None)
    assert "evaluation inputs not reachable (nothing was trained)" in str(error.value)
    assert "evaluation.prompts: alpaca_eval: hub dataset tatsu-lab/alpaca_eval, file alpaca_eval.json" in str(
        error.value
    )
    assert not (tmp_path / "grid").exists()
    with pytest.raises(GridError, match="no cell 'nope'"):
        run_grid(load_grid(grid_file, data_dir=tmp_path), log=lambda line: None, only="nope")


@pytest.mark.slow
def test_a_grid_reads_named_evaluation_data_from_the_hub_or_the_named_folder(
    tmp_path, monkeypatch, shared_data
):
    """One tiny cell run end to end (`--cell`) with prompts and references named ``alpaca_eval``: first from a hub
    stand-in (a hub cache read by the real client in offline mode), then from a local data folder named by
    ``--data-dir``, which wins; the generated outputs answer exactly the prompts of the source used."""
    import json

    import huggingface_hub.constants

    from symnoise.grid import read_stages

    cache = tmp_path / "hub" / "datasets--tatsu-lab--alpaca_eval"
    (cache / "snapshots" / "abc").mkdir(parents=True)
    (cache / "refs").mkdir()
    (cache / "refs" / "main").write_text("abc")
    hub_rows = [
        {
            "instruction": f"Spell {w} backwards.",
            "output": w[::-1],
            "generator": "text_davinci_003",
            "dataset": "vicuna",
        }
        for w in ("kalo", "mipe", "tonar")
    ]
    (cache / "snapshots" / "abc" / "alpaca_eval.json").write_text(json.dumps(hub_rows))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("SYMNOISE_DATA_DIR", raising=False)

    data = tiny_grid(tmp_path, methods=["neftune"])
    data["evaluation"].update(prompts="alpaca_eval", references="alpaca_eval", subset=4)  # the hub file has 3
    grid_file = tmp_path / "g.yaml"
    grid_file.write_text(yaml.safe_dump(data), encoding="utf-8")
    grid = load_grid(grid_file)
    cell = grid.cells[0]
    outcome = run_grid(grid, log=lambda line: None, only=cell.id)
    assert [c.status for c in outcome.cells] == ["finished"]
    assert outcome.report_dir is None and not (tmp_path / "grid" / "report").exists()  # left to the final run
    outputs = json.loads((cell.run_dir / "model_outputs.json").read_text())
    assert [o["instruction"] for o in outputs] == [r["instruction"] for r in hub_rows]
    assert read_stages(cell.run_dir)["generate"]["prompts_file"].endswith("snapshots/abc/alpaca_eval.json")
    assert read_stages(cell.run_dir)["reference_loss"]["examples"] == 3

    data["output_dir"] = str(tmp_path / "local")
    grid_file.write_text(yaml.safe_dump(data), encoding="utf-8")
    local = load_grid(grid_file, data_dir=shared_data)  # 4 of the 805 local prompts, spread evenly
    cell = local.cells[0]
    assert run_grid(local, log=lambda line: None, only=cell.id).cells[0].status == "finished"
    ae1 = [
        json.loads(line)
        for line in (shared_data / "alpaca_eval/alpaca_eval_ae1_reference_text_davinci_003.jsonl")
        .read_text()
        .splitlines()
    ]
    outputs = json.loads((cell.run_dir / "model_outputs.json").read_text())
    assert [o["instruction"] for o in outputs] == [ae1[i * 805 // 4]["instruction"] for i in range(4)]
