"""`symnoise grid`: validation naming the field, every shipped grid, a two-cell grid run end to end, killed
between cells and resumed without recomputing finished cells, a failed cell recorded while the grid goes on,
and the accelerate command line."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT

from symnoise.grid import GridError, accelerate_command, load_grid, read_stages, run_grid, validate_grid
from symnoise.grid import runner as grid_runner

SHIPPED = sorted(
    p for p in (REPO_ROOT / "configs" / "grid").glob("*.yaml") if not p.name.endswith(".expected.yaml")
)

pytestmark = pytest.mark.slow  # multi-process, subprocess or whole-pipeline tests: `make test` only
STAGES = ["train", "generate", "reference_loss", "stats"]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def tiny_grid(tmp_path: Path, methods=("none", "symnoise"), train_file: Path | None = None) -> dict:
    """A grid of tiny cells: a 1-layer model pretrained for 3 steps on the synthetic set, 2 training steps,
    6 evaluation prompts with references, 6 new tokens each."""
    prompts = write_jsonl(
        tmp_path / "prompts.jsonl",
        [
            {"instruction": f"Reverse the word {w}.", "output": w[::-1], "dataset": "toy"}
            for w in ("kalo", "mipe", "tonar", "vesu", "rabin", "dolek")
        ],
    )
    train_file = train_file or write_jsonl(
        tmp_path / "train.jsonl",
        [{"instruction": f"Repeat {i}.", "input": "", "output": f"{i} {i}"} for i in range(24)],
    )
    return {
        "name": "tiny",
        "output_dir": str(tmp_path / "grid"),
        "base": {
            "model": {"name": "replaced", "dtype": "float32"},
            "data": {"path": "replaced", "format": "alpaca", "max_length": 256},
            "training": {
                "output_dir": "replaced",
                "max_steps": 2,
                "learning_rate": 1e-3,
                "per_device_batch_size": 8,
                "effective_batch_size": 8,
                "save_steps": 1000,
                "logging_steps": 1,
                "report_to": [],
                "device": "cpu",
            },
        },
        "pretrain": {
            "fallback": "synthetic",
            "vocab_size": 512,
            "hidden_size": 16,
            "layers": 1,
            "heads": 2,
            "block_size": 32,
            "steps": 3,
            "batch_size": 4,
            "warmup_steps": 1,
        },
        "axes": {
            "dataset": [{"name": "toy", "path": str(train_file), "format": "alpaca", "alpha": 5}],
            "method": list(methods),
            "seed": [0],
        },
        "evaluation": {
            "prompts": str(prompts),
            "references": str(prompts),
            "reference_loss": True,
            "stats_words": 5,
            "decoding": {"max_length": 320, "max_new_tokens": 6, "batch_size": 4, "device": "cpu"},
        },
    }


def write_grid(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def file_times(directory: Path) -> dict[str, int]:
    return {
        str(p.relative_to(directory)): p.stat().st_mtime_ns
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


# ------------------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_grid_validates(path, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    data = yaml.safe_load(
        path.read_text()
    )  # validated as shipped: the paper grids name hub sources, no files
    grid = validate_grid(data, str(path))
    assert len({c.id for c in grid.cells}) == len(grid.cells)
    for cell in grid.cells:
        assert cell.config.training.output_dir.endswith(cell.id)


def test_paper_grids_cover_the_papers_tables(monkeypatch):
    monkeypatch.chdir(REPO_ROOT)

    def load(name):
        return validate_grid(yaml.safe_load((REPO_ROOT / "configs/grid" / name).read_text()), name)

    table1 = load("paper-table1.yaml")
    assert {(c.dataset, c.config.noise.method, c.alpha) for c in table1.cells} == {
        (d, m, 0.0 if m == "none" else a)
        for d, a in (("alpaca", 5), ("evol-instruct", 5), ("sharegpt", 10), ("openplatypus", 15))
        for m in ("none", "uniform", "gaussian", "symnoise")
    }
    assert all(c.config.model.name == "meta-llama/Llama-2-7b-hf" for c in table1.cells)
    judge = table1.spec.evaluation.judge  # AlpacaEval 1's own GPT-4 annotators, the papers' judge for Table 1
    assert judge is not None and (judge.kind, judge.annotator) == ("openai", "alpaca_eval_gpt4")
    table4 = load("paper-table4.yaml")
    variants = {(c.config.noise.method, c.alpha, c.config.noise.match_uniform_norm) for c in table4.cells}
    assert variants == {
        ("none", 0.0, True),
        ("uniform", 5, True),
        ("uniform", 10, True),
        ("uniform", 15, True),
        ("gaussian", 5, True),
        ("gaussian", 10, True),
        ("gaussian", 15, True),
        ("gaussian", 5, False),
        ("bernoulli", 5, True),
        ("symnoise", 5, True),
    }
    assert {c.dataset for c in table4.cells} == {"alpaca", "evol-instruct", "openplatypus"}
    assert len(table4.cells) == 30


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda g: g.pop("output_dir"), "output_dir: Field required"),
        (lambda g: g["axes"].update(method=[]), "axes.method: List should have at least 1 item"),
        (lambda g: g["axes"].update(method=["laplace"]), "axes.method.0: unknown noise method 'laplace'"),
        (lambda g: g["axes"].update(colour=["red"]), "axes.colour: unknown field"),
        (lambda g: g["axes"].update(alpha=[-1]), "axes.alpha: alphas must be >= 0"),
        (lambda g: g["evaluation"].update(subset=0), "evaluation.subset"),
        (
            lambda g: g["evaluation"].update(prompts="missing.jsonl"),
            "evaluation.prompts: missing.jsonl not found",
        ),
        (lambda g: g["evaluation"].update(judge={"kind": "hf"}), "kind hf needs model"),
        (
            lambda g: g["evaluation"]["decoding"].update(repetition_penalty=0),
            "evaluation.decoding.repetition_penalty",
        ),
        (lambda g: g.update(launcher={"kind": "accelerate"}), "kind accelerate needs config_file"),
        (lambda g: g["axes"].update(model=["gpt2"]), "axes.model must be empty when pretrain is set"),
        (lambda g: g["base"]["training"].update(learning_rate=0), "training.learning_rate"),
        (lambda g: g["base"]["training"].update(lr=1), "training.lr: unknown field"),
        (
            lambda g: g["base"]["training"].update(save_model=False),
            "training.save_model: false writes no model",
        ),
        (lambda g: g.update(overrides=["noise"]), "overrides"),
        (lambda g: g["axes"].update(method=["none", {"name": "none"}]), "two cells have the id"),
        (
            lambda g: g["axes"]["dataset"][0].update(path="nowhere.json"),
            "axes.dataset.0.path: nowhere.json not found",
        ),
    ],
)
def test_bad_grid_fields_are_named(tmp_path, change, message):
    data = tiny_grid(tmp_path)
    change(data)
    path = write_grid(tmp_path, data)
    with pytest.raises(GridError) as error:
        load_grid(path)
    assert message in str(error.value) and str(path) in str(error.value)


def test_bad_grid_files(tmp_path):
    with pytest.raises(GridError, match="grid file not found"):
        load_grid(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("axes: [unclosed")
    with pytest.raises(GridError, match="not valid YAML"):
        load_grid(bad)
    bad.write_text("- a list\n")
    with pytest.raises(GridError, match="top level must be a mapping"):
        load_grid(bad)


def test_cli_rejects_a_bad_grid_before_running(tmp_path, capsys):
    from symnoise.cli.main import main

    data = tiny_grid(tmp_path)
    data["axes"]["method"] = ["neftune", {"name": "gauss", "method": "gaussian", "noise": {"regoin": "all"}}]
    assert main(["grid", str(write_grid(tmp_path, data))]) == 2
    err = capsys.readouterr().err
    assert "cell tiny-llama-toy-gauss-a5-s0" in err and "regoin" in err
    assert not (tmp_path / "grid").exists()


def test_alpha_resolution_and_cell_ids(tmp_path):
    data = tiny_grid(
        tmp_path,
        methods=[
            "none",
            {"name": "neft", "method": "neftune", "alpha": [5, 15]},
            {"name": "gauss-unmatched", "method": "gaussian", "noise": {"match_uniform_norm": False}},
        ],
    )
    data["axes"]["seed"] = [0, 1]
    grid = validate_grid(data)
    ids = [c.id for c in grid.cells]
    assert ids == [
        "tiny-llama-toy-none-a0-s0",
        "tiny-llama-toy-none-a0-s1",
        "tiny-llama-toy-neft-a5-s0",
        "tiny-llama-toy-neft-a5-s1",
        "tiny-llama-toy-neft-a15-s0",
        "tiny-llama-toy-neft-a15-s1",
        "tiny-llama-toy-gauss-unmatched-a5-s0",
        "tiny-llama-toy-gauss-unmatched-a5-s1",
    ]
    unmatched = grid.cells[-1].config
    assert unmatched.noise.method == "gaussian" and not unmatched.noise.match_uniform_norm
    assert unmatched.noise.alpha == 5 and unmatched.training.seed == 1
    assert grid.cells[0].config.model.name == str(tmp_path / "grid" / "pretrain" / "model")


def test_accelerate_command_line(tmp_path):
    data = tiny_grid(tmp_path)
    accel = tmp_path / "ddp.yaml"
    accel.write_text("distributed_type: MULTI_GPU\n")
    data["launcher"] = {"kind": "accelerate", "config_file": str(accel), "num_processes": 4}
    grid = validate_grid(data)
    config = grid.cells[0].run_dir / "cell.yaml"
    assert accelerate_command(grid.spec.launcher, config, resume=False) == [
        "accelerate",
        "launch",
        "--config_file",
        str(accel),
        "--num_processes",
        "4",
        "-m",
        "symnoise",
        "train",
        str(config),
    ]
    assert accelerate_command(grid.spec.launcher, config, resume=True)[-1] == "--resume"


# ------------------------------------------------------------------------------------------------ running


def test_accelerate_launcher_trains_through_the_given_command(tmp_path):
    """The launcher runs the command it builds; a stand-in `accelerate` that runs `symnoise train` in one process
    shows the cell config file is complete and the cell is trained from it."""
    fake = tmp_path / "fake-accelerate"
    fake.write_text(
        f"#!/bin/sh\n# launch --config_file F [--num_processes N] -m symnoise train CELL.yaml\n"
        f'echo "$@" >> {tmp_path}/launched.txt\nshift 3\n'
        f'while [ "$1" != "-m" ]; do shift; done\nshift\nexec {sys.executable} -m "$@"\n'
    )
    fake.chmod(0o755)
    accel = tmp_path / "cpu.yaml"
    accel.write_text("distributed_type: NO\n")
    data = tiny_grid(tmp_path, methods=["neftune"])
    data["launcher"] = {"kind": "accelerate", "config_file": str(accel), "executable": str(fake)}
    data["evaluation"] = {}
    outcome = run_grid(validate_grid(data), log=lambda line: None)
    assert [c.status for c in outcome.cells] == ["finished"]
    launched = (tmp_path / "launched.txt").read_text().split()
    assert launched[:3] == ["launch", "--config_file", str(accel)] and launched[-1].endswith("cell.yaml")
    assert (tmp_path / "grid/cells/tiny-llama-toy-neftune-a5-s0/model.safetensors").is_file()


def test_grid_killed_between_cells_resumes_without_recomputing(tmp_path, monkeypatch):
    path = write_grid(tmp_path, tiny_grid(tmp_path))
    grid = load_grid(path)
    first, second = (c.run_dir for c in grid.cells)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        [sys.executable, "-m", "symnoise", "grid", str(path)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.time() + 90
    while set(read_stages(first)) != set(STAGES):
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        assert time.time() < deadline, "the first cell did not finish in time"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # a real kill, between the first cell and the end of the second
    process.wait()
    assert process.returncode == -signal.SIGKILL
    before = file_times(first)
    second_done = set(read_stages(second))
    assert second_done != set(STAGES), "the kill came too late to test resumption"

    calls = []
    real_train = grid_runner.train
    monkeypatch.setattr(
        grid_runner,
        "train",
        lambda config, resume=False, **kwargs: (
            calls.append((Path(config.training.output_dir).name, resume))
            or real_train(config, resume=resume, **kwargs)
        ),
    )
    outcome = run_grid(load_grid(path), log=lambda line: None)
    assert [c.status for c in outcome.cells] == ["finished", "finished"]
    assert outcome.cells[0].ran == [] and outcome.cells[0].skipped == STAGES
    assert outcome.cells[1].ran == [s for s in STAGES if s not in second_done]
    assert calls == ([] if "train" in second_done else [(second.name, False)])
    assert file_times(first) == before, "a finished cell was touched on re-run"

    after_resume = {d: file_times(d) for d in (first, second)}
    calls.clear()
    outcome = run_grid(load_grid(path), log=lambda line: None)
    assert calls == [] and all(c.ran == [] for c in outcome.cells)
    assert {d: file_times(d) for d in (first, second)} == after_resume

    report = json.loads((tmp_path / "grid/report/report.json").read_text())
    assert sorted(Path(r["path"]).name for r in report["runs"]) == sorted([first.name, second.name])
    assert {r["variant"] for r in report["runs"]} == {"base", "SymNoise 5"}
    assert all(r["stats"] is not None for r in report["runs"])
    assert {r["stats"]["words"] for r in report["runs"]} == {5}  # the grid's stats_words, not the papers' 50
    summary = json.loads((tmp_path / "grid/summary.json").read_text())
    assert [c["status"] for c in summary["cells"]] == ["finished", "finished"]
    assert all(c["reference_loss"] > 0 for c in summary["cells"])
    assert summary["pretrain"]["final_loss"] < summary["pretrain"]["first_loss"]

    changed = yaml.safe_load(path.read_text())
    changed["evaluation"]["decoding"]["max_new_tokens"] = 7
    outcome = run_grid(validate_grid(changed, str(path)), log=lambda line: None)
    assert all(c.status == "failed" and "other evaluation settings" in c.error for c in outcome.cells)
    for directory in (first, second):
        now = file_times(directory)
        assert now.pop("failure.json") and now == after_resume[directory], "stale results were touched"


def test_a_failed_cell_is_recorded_and_the_grid_goes_on(tmp_path):
    good = write_jsonl(
        tmp_path / "good.jsonl", [{"instruction": f"Say {i}.", "output": str(i)} for i in range(16)]
    )
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"instruction": "ok", "output": "fine"}\n{"instruction": 5, "output": "bad"}\n')
    data = tiny_grid(tmp_path, methods=["none"], train_file=good)
    data["axes"]["dataset"] = [
        {"name": "broken", "path": str(broken), "format": "alpaca"},
        {"name": "good", "path": str(good), "format": "alpaca"},
    ]
    data["evaluation"] = {}
    outcome = run_grid(validate_grid(data), log=lambda line: None)
    assert [(c.cell, c.status) for c in outcome.cells] == [
        ("tiny-llama-broken-none-a0-s0", "failed"),
        ("tiny-llama-good-none-a0-s0", "finished"),
    ]
    failed = outcome.cells[0]
    assert failed.stage == "train" and "DataError" in failed.error and "row 1" in failed.error
    failure = json.loads((tmp_path / "grid/cells/tiny-llama-broken-none-a0-s0/failure.json").read_text())
    assert failure["stage"] == "train" and "Traceback" in failure["traceback"]
    status = json.loads((tmp_path / "grid/status.json").read_text())
    assert [(c["status"], bool(c["error"])) for c in status["cells"]] == [
        ("failed", True),
        ("finished", False),
    ]
    report = json.loads((tmp_path / "grid/report/report.json").read_text())
    assert [Path(r["path"]).name for r in report["runs"]] == ["tiny-llama-good-none-a0-s0"]
    assert "tiny-llama-broken-none-a0-s0: train: DataError" in (tmp_path / "grid/summary.md").read_text()

    data["base"]["training"]["learning_rate"] = 2e-3  # a changed config must not reuse the old cell silently
    outcome = run_grid(validate_grid(data), log=lambda line: None)
    assert outcome.cells[1].status == "failed" and "StaleCellError" in outcome.cells[1].error
    assert "delete the cell directory" in outcome.cells[1].error


def test_check_and_estimate_read_every_source_of_a_mixture(tmp_path):
    """A base config training on a mixture (no dataset axis): `grid --check` probes each source and the eval file,
    and the estimate counts each source within its limit, taken weight times."""
    from symnoise.grid.check import training_inputs
    from symnoise.grid.estimate import estimate_cell

    data = tiny_grid(tmp_path)
    listed = tmp_path / "listed.json"
    listed.write_text(
        json.dumps([{"instruction": f"Say {i}.", "input": "", "output": str(i)} for i in range(10)])
    )
    lines = write_jsonl(
        tmp_path / "lines.jsonl", [{"instruction": f"Echo {i}.", "output": str(i)} for i in range(7)]
    )
    del data["axes"]["dataset"]
    data["base"]["data"] = {
        "datasets": [{"path": str(listed), "weight": 2.5}, {"path": str(lines), "limit": 3}],
        "format": "alpaca",
        "max_length": 256,
        "eval_path": str(tmp_path / "missing.json"),
    }
    data["base"]["training"]["max_steps"] = -1
    grid = load_grid(write_grid(tmp_path, data))
    cell = grid.cells[0]
    assert estimate_cell(grid, cell).examples == 2 * 10 + 5 + 3
    inputs = {item.where: item.problem for item in training_inputs(grid) if item.what == "dataset"}
    assert inputs == {
        f"local {listed}": None,
        f"local {lines}": None,
        f"local {tmp_path / 'missing.json'}": f"{tmp_path / 'missing.json'} not found",
    }
