"""`symnoise train`: config validation, shipped configs, an end-to-end run on a tiny model, resume, DDP."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO_ROOT, free_port

from symnoise.train import ConfigError, load_config, train
from symnoise.train.config import validate_config

CONFIGS = sorted((REPO_ROOT / "configs").rglob("*.yaml"))
TRAIN_CONFIGS = [
    p for p in CONFIGS if "llama2-7b" in p.parts
]  # the papers' grid; starters: test_shipped_configs


def minimal(**sections):
    data = {"model": {"name": "m"}, "data": {"path": "d.json"}, "training": {"output_dir": "out"}}
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    return data


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_shipped_config_validates(path):
    config = load_config(path)
    # no licence pinned: the model card takes the base model's from its card (a copy pointed elsewhere must not
    # keep llama2)
    assert config.model.name == "meta-llama/Llama-2-7b-hf" and config.model.license is None
    assert config.training.effective_batch_size == 128
    method = path.stem.split("-")[-1] if not path.stem.endswith("lora") else "symnoise"
    expected = {"none": "none", "neftune": "uniform"}.get(method, method)
    assert config.noise.method == expected


def test_paper_grid_is_complete():
    names = {p.stem for p in TRAIN_CONFIGS}
    for dataset in ("alpaca", "evol-instruct", "sharegpt", "openplatypus"):
        for method in ("none", "neftune", "gaussian", "bernoulli", "symnoise"):
            assert f"{dataset}-{method}" in names
    alphas = {
        d: load_config(REPO_ROOT / f"configs/llama2-7b/{d}-symnoise.yaml").noise.alpha
        for d in ("alpaca", "evol-instruct", "sharegpt", "openplatypus")
    }
    assert alphas == {"alpaca": 5, "evol-instruct": 5, "sharegpt": 10, "openplatypus": 15}


@pytest.mark.parametrize("path", [p for p in CONFIGS if "accelerate" in p.parts], ids=lambda p: p.name)
def test_accelerate_configs_parse(path):
    data = yaml.safe_load(path.read_text())
    assert data["distributed_type"] in {"MULTI_GPU", "FSDP", "DEEPSPEED"}


@pytest.mark.parametrize(
    "overrides,field",
    [
        (["noise.alpha=-1"], "noise"),
        (["noise.method=laplace"], "noise"),
        (["noise.alhpa=5"], "noise"),
        (["training.learning_rate=0"], "training.learning_rate"),
        (["training.lr=1e-4"], "training.lr: unknown field"),
        (["data.format=csv"], "data.format"),
        (["data.max_length=abc"], "data.max_length"),
        (["training.effective_batch_size=10", "training.per_device_batch_size=4"], "multiple of"),
        (["lora.quantize_4bit=true"], "lora.enabled"),
        (["model.trust_remote_code=maybe"], "model.trust_remote_code"),
        (["optimizer.name=adam"], "optimizer: unknown field"),
        (["training.push_to_hub=true", "training.save_model=false"], "save_model: false does not write"),
    ],
)
def test_invalid_fields_are_named(tmp_path, overrides, field):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(minimal()))
    with pytest.raises(ConfigError) as error:
        load_config(path, overrides)
    assert field in str(error.value) and str(path) in str(error.value)


def test_bad_config_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- a list")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(bad)
    with pytest.raises(ConfigError, match="section.field=value"):
        load_config(None, ["alpha"])


def test_overrides_are_typed():
    config = validate_config(minimal())
    assert config.noise.method == "symnoise" and config.noise.alpha == 5.0  # the papers' default
    config = load_config(
        None,
        [
            "model.name=m",
            "data.path=d.json",
            "training.output_dir=o",
            "noise.alpha=10",
            "noise.method=neftune",
            "lora.enabled=true",
            "lora.target_modules=[q_proj]",
        ],
    )
    assert config.noise.alpha == 10.0 and config.noise.method == "uniform"
    assert config.lora.enabled and config.lora.target_modules == ["q_proj"]


def tiny_config(base_model, data_path, out, **overrides):
    data = {
        "model": {"name": str(base_model)},
        "data": {"path": str(data_path), "max_length": 96},
        "noise": {"method": "symnoise", "alpha": 5.0, "seed": 0},
        "training": {
            "output_dir": str(out),
            "max_steps": 4,
            "per_device_batch_size": 4,
            "effective_batch_size": 8,
            "learning_rate": 1e-3,
            "save_steps": 2,
            "report_to": ["tensorboard"],
            "device": "cpu",
            "seed": 0,
        },
    }
    for dotted, value in overrides.items():
        section, field = dotted.split("__")
        data.setdefault(section, {})[field] = value
    return validate_config(data)


@pytest.mark.floor
def test_end_to_end_run_writes_the_run_directory(base_model, alpaca_file, tmp_path):
    out = tmp_path / "run"
    result = train(tiny_config(base_model, alpaca_file, out))
    report = json.loads((out / "data_report.json").read_text())
    assert report["loaded"] == 36 and report["format"] == "alpaca"
    assert result.steps == 4 and result.train_examples == report["examples"] == 36 - report["dropped"] > 0
    for name in (
        "config.yaml",
        "symnoise_run.json",
        "data_report.json",
        "metrics.jsonl",
        "metrics.csv",
        "model.safetensors",
        "tokenizer.json",
        "README.md",
        "train_summary.json",
    ):
        assert (out / name).is_file(), name
    assert not (out / "training_args.bin").exists()
    assert list((out / "runs").rglob("events.out.tfevents.*"))
    run = json.loads((out / "symnoise_run.json").read_text())
    assert run["template"] == "alpaca" and run["noise"]["method"] == "symnoise" and run["max_length"] == 96
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [line for line in lines if "loss" in line]
    assert [line["step"] for line in steps] == [1, 2, 3, 4]
    for line in steps:
        assert {
            "loss",
            "learning_rate",
            "grad_norm",
            "noise_norm",
            "noise_alpha",
            "tokens_per_s",
            "padding_fraction",
            "peak_mem_gb",
        } <= line.keys()
        assert line["noise_norm"] == pytest.approx(5 / 3**0.5, rel=1e-5)
        assert line["tokens_per_s"] > 0 and 0 <= line["padding_fraction"] < 1
    card = (out / "README.md").read_text()
    assert "`symnoise`" in card and "| alpha | 5.0 |" in card
    assert (out / "checkpoint-2" / "symnoise_noise_rank0.pt").is_file()
    assert json.loads((out / "train_summary.json").read_text())["model_saved"] is True
    # The final model is an ordinary causal LM: it loads from safetensors without symnoise.
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert not any("symnoise" in key for key in reloaded.state_dict())


@pytest.mark.floor
def test_save_model_false_writes_no_checkpoint_and_no_model(base_model, alpaca_file, tmp_path):
    """A benchmark or trial run: no checkpoint (not every save_steps, not at the last step) and no final model,
    but the config, metrics and summary of a finished run; a later run into the directory is told it finished."""
    out = tmp_path / "run"
    config = tiny_config(base_model, alpaca_file, out, training__save_model=False)  # save_steps 2 of 4 steps
    result = train(config)
    assert result.steps == 4
    weights = [p for p in out.rglob("*") if p.suffix in (".safetensors", ".bin", ".pt")]
    assert not list(out.glob("checkpoint-*")) and not list(out.glob("tmp-*")) and not weights, sorted(
        out.rglob("*")
    )
    for name in ("config.yaml", "symnoise_run.json", "data_report.json", "metrics.jsonl", "metrics.csv"):
        assert (out / name).is_file(), name
    for name in ("tokenizer.json", "README.md", "config.json"):  # the final model's other files
        assert not (out / name).exists(), name
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["finished"] is True and summary["model_saved"] is False and summary["steps"] == 4
    with pytest.raises(ConfigError) as refused:
        train(config)
    assert str(refused.value) == (
        f"training.output_dir: {out} already holds a run (a finished run that saved no model "
        "(training.save_model: false)); pass --overwrite to delete it and start a new run, or choose another "
        "output_dir"
    )


def test_save_model_false_still_checkpoints_on_a_preemption_notice(
    base_model, alpaca_file, tmp_path, monkeypatch
):
    """The notice asks for a checkpoint to go on from: it is written, and the resumed run ends without a model."""
    from transformers import Trainer

    from symnoise.train.trainer import TrainingStopped, request_stop

    original = Trainer.training_step

    def notice_during_step_2(self, *args, **kwargs):
        if self.state.global_step == 1:
            request_stop()
        return original(self, *args, **kwargs)

    out = tmp_path / "run"
    config = tiny_config(base_model, alpaca_file, out, training__save_model=False)
    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "training_step", notice_during_step_2)
        with pytest.raises(TrainingStopped, match="checkpoint-2 holds the run"):
            train(config)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    assert train(config, resume=True).steps == 4
    assert not list(out.glob("checkpoint-4")) and not (out / "model.safetensors").exists()
    assert json.loads((out / "train_summary.json").read_text())["model_saved"] is False


@pytest.mark.floor
def test_existing_run_is_not_overwritten_and_resume_continues(base_model, alpaca_file, tmp_path):
    out = tmp_path / "run"
    config = tiny_config(base_model, alpaca_file, out, training__max_steps=2)
    train(config)
    with pytest.raises(ConfigError, match="already holds a run"):
        train(config)
    # More steps change the schedule (cosine over 4 steps, not 2): resuming would mix two runs, so it is refused.
    longer = tiny_config(base_model, alpaca_file, out, training__max_steps=4)
    with pytest.raises(ConfigError, match=r"training.max_steps: 2 -> 4"):
        train(longer, resume=True)
    relogged = tiny_config(base_model, alpaca_file, out, training__max_steps=2, training__logging_steps=2)
    result = train(relogged, resume=True)  # a logging change does not change training: allowed and recorded
    assert result.steps == 2
    steps = [
        json.loads(line)["step"]
        for line in (out / "metrics.jsonl").read_text().splitlines()
        if "loss" in json.loads(line)
    ]
    assert steps == [1, 2]
    record = json.loads((out / "run_start.json").read_text())
    assert record["config"]["training"]["logging_steps"] == 1
    assert record["resumes"][-1]["harmless_changes"] == {"training.logging_steps": [1, 2]}
    with pytest.raises(ConfigError, match="no checkpoint"):
        train(tiny_config(base_model, alpaca_file, tmp_path / "fresh"), resume=True)


def test_bad_data_fails_before_the_model_is_loaded(alpaca_file, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "input": "", "output": "b"}\n{"instruction": "c", "input": ""}\n')
    from symnoise.data import DataError

    with pytest.raises(DataError, match=r"bad.jsonl:row 1 \(line 2\).*output"):
        train(tiny_config("no/such-model-anywhere", bad, tmp_path / "run"))


def test_cli_reports_config_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(minimal()))
    proc = subprocess.run(
        [sys.executable, "-m", "symnoise", "train", str(path), "noise.alpha=-2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "noise" in proc.stderr and "alpha" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.floor
def test_padding_free_packing_trains_with_the_same_noise_scale(base_model, alpaca_file, tmp_path):
    out = tmp_path / "packed"
    train(tiny_config(base_model, alpaca_file, out, data__packing="padding_free", training__max_steps=2))
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [s for s in steps if "loss" in s]
    assert all(s["padding_fraction"] == 0 for s in steps)
    assert all(s["noise_norm"] == pytest.approx(5 / 3**0.5, rel=1e-5) for s in steps)


@pytest.mark.floor
def test_eval_loss_is_logged_without_gathering_logits(base_model, alpaca_file, tmp_path, monkeypatch):
    """Eval reports the loss only: gathering eval logits would hold (examples x length x vocab) floats."""
    import transformers

    gathered = []
    real_step = transformers.Trainer.prediction_step
    monkeypatch.setattr(
        transformers.Trainer,
        "prediction_step",
        lambda self, *a, **k: gathered.append((out := real_step(self, *a, **k))[1]) or out,
    )
    out = tmp_path / "eval"
    train(
        tiny_config(
            base_model,
            alpaca_file,
            out,
            training__max_steps=2,
            training__eval_steps=2,
            data__eval_path=str(alpaca_file),
        )
    )
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any(math.isfinite(s.get("eval_loss", math.nan)) for s in steps)
    assert gathered and all(logits is None for logits in gathered)


@pytest.mark.floor
def test_rows_packing_trains_with_the_same_noise_scale_and_counts_real_tokens(
    base_model, alpaca_file, tmp_path
):
    out = tmp_path / "rows"
    train(tiny_config(base_model, alpaca_file, out, data__packing="rows", training__max_steps=2))
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [s for s in steps if "loss" in s]
    assert all(0 <= s["padding_fraction"] < 0.5 for s in steps)
    assert all(s["noise_norm"] == pytest.approx(5 / 3**0.5, rel=1e-5) for s in steps)


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(base_model, alpaca_file, tmp_path):
    """torchrun with 2 CPU processes (gloo): both ranks train, their noise differs, one run directory."""
    out = tmp_path / "ddp"
    config = tmp_path / "ddp.yaml"
    config.write_text(
        yaml.safe_dump(
            tiny_config(base_model, alpaca_file, out, training__max_steps=2, training__save_steps=2).to_dict()
        )
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT / "src")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            f"--master_port={free_port()}",
            "-m",
            "symnoise",
            "train",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    checkpoint = out / "checkpoint-2"
    states = [torch.load(checkpoint / f"symnoise_noise_rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert states[0]["rank"] == 0 and states[1]["rank"] == 1
    assert states[0]["seed"] != states[1]["seed"]
    assert not torch.equal(states[0]["generator"], states[1]["generator"])
    assert (out / "model.safetensors").is_file()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    assert Path(out / "metrics.jsonl").read_text().count('"loss"') == 2  # written once, by rank 0
    logged = proc.stdout + proc.stderr
    assert (
        logged.count("loaded 36 of 36 rows") == 1 and logged.count(" examples, ") == 1
    )  # rank 0's summary only
    # the start-of-training summary, also rank 0's only, counts both processes in the batch
    assert logged.count("training: 2 optimizer steps (training.max_steps) on ") == 1
    assert (
        logged.count(
            "  effective batch: 8 examples per step = 4 per device x 1 accumulation steps x 2 processes"
        )
        == 1
    )


@pytest.mark.floor
def test_cli_stops_cleanly_on_a_non_finite_loss(base_model, alpaca_file, tmp_path):
    """An absurd learning rate blows the weights up after one step; the run stops with a message, no traceback."""
    out = tmp_path / "nan"
    config = tmp_path / "nan.yaml"
    config.write_text(
        yaml.safe_dump(
            tiny_config(
                base_model, alpaca_file, out, training__learning_rate=1e30, training__warmup_ratio=0.0
            ).to_dict()
        )
    )
    proc = subprocess.run(
        [sys.executable, "-m", "symnoise", "train", str(config)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "training stopped:" in proc.stderr and "Traceback" not in proc.stderr
    assert not (out / "model.safetensors").exists()


def test_no_progress_bars_when_stderr_is_a_file(base_model, alpaca_file, tmp_path):
    """A log file gets lines, not redrawn progress bars (weight loading, saving, the Trainer's bar)."""
    config = tiny_config(base_model, alpaca_file, tmp_path / "run", training__max_steps=2)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    env = {k: v for k, v in os.environ.items() if k not in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS")}
    with (tmp_path / "log.txt").open("w") as log:
        proc = subprocess.run(
            [sys.executable, "-m", "symnoise", "train", str(path)],
            stdout=log,
            stderr=log,
            env=env,
            timeout=300,
        )
    text = (tmp_path / "log.txt").read_text()
    assert proc.returncode == 0, text[-2000:]
    assert "\r" not in text and "it/s]" not in text and "Loading weights" not in text
