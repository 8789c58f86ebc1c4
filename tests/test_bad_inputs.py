"""Bad configs and command lines at the edges: each is refused by `symnoise train` with exit status 2 and one
message naming the field or path, before the model is loaded, and without leaving a run directory behind.

The cases run through the CLI's entry point (``symnoise.cli.main.main``) in this process, so that loading the
model can be made to fail the test; `test_cli_subprocess_*` run the real command for a few of them.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT
from test_train import tiny_config

from symnoise.cli.main import main
from symnoise.layout import LOCK_FILE

TABLE: list[str] = []  # case -> message, printed at the end for docs/reliability.md


def bad_row_file(tmp_path, row):
    path = tmp_path / "rows.jsonl"
    good = {"instruction": "Say hi.", "input": "", "output": "hi"}
    path.write_text("".join(json.dumps(r) + "\n" for r in (good, good, row)))
    return path


def model_dir(tmp_path, base_model, keep):
    import shutil

    folder = tmp_path / "model"
    folder.mkdir()
    for name in keep:
        shutil.copy(base_model / name, folder / name)
    return folder


def setup_case(case, tmp_path, base_model, alpaca_file, monkeypatch):
    """The config dict, extra command-line words and the output directory for one case."""
    out = tmp_path / "run"
    overrides, words = {}, []
    model, data = str(base_model), alpaca_file
    if case == "output_dir under a file":
        (tmp_path / "notes.txt").write_text("x")
        out = tmp_path / "notes.txt" / "run"
    elif case == "output_dir is a file":
        out = tmp_path / "run.txt"
        out.write_text("x")
    elif case == "flash_attention_2 without flash-attn":
        overrides["model__attn_implementation"] = "flash_attention_2"
    elif case == "flash_attention_4 with only flash-attn 2":
        from symnoise.train import preflight

        importable = (
            preflight._importable
        )  # flash_attn (and its cute folder) import, as after pip install flash-attn
        monkeypatch.setattr(
            preflight, "_importable", lambda module: module == "flash_attn" or importable(module)
        )
        overrides["model__attn_implementation"] = "flash_attention_4"
    elif case == "template chat, tokenizer without chat template":
        overrides["data__template"] = "chat"
    elif case == "LoRA target_modules not in the model":
        overrides.update(lora__enabled=True, lora__target_modules=["q_proj", "query_key_value"])
    elif case == "report_to wandb without wandb":
        overrides["training__report_to"] = ["wandb"]
    elif case == "empty model directory":
        model = str(model_dir(tmp_path, base_model, []))
    elif case == "model directory without config.json":
        model = str(model_dir(tmp_path, base_model, ["tokenizer.json"]))
    elif case == "model directory without weights":
        model = str(model_dir(tmp_path, base_model, ["config.json", "tokenizer.json"]))
    elif case == "local model path that does not exist":
        model = str(tmp_path / "no" / "such" / "model")
    elif case == "hub model name, HF_HUB_OFFLINE=1":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        model = "symnoise-test/not-cached-model"
    elif case == "hub model name, hub unreachable":
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: connection refused
        model = "symnoise-test/not-cached-model"
    elif case == "user README.md and config.yaml in output_dir":
        out.mkdir()
        (out / "README.md").write_text("mine")
        (out / "config.yaml").write_text("mine: true")
    elif case == "--check with a missing data file":
        data, words = tmp_path / "missing.json", ["--check"]
    elif case == "--resume with no run":
        words = ["--resume"]
    elif case == "data.max_length shorter than every prompt":
        overrides["data__max_length"] = 8
    elif case == "a null output":
        data = bad_row_file(tmp_path, {"instruction": "Say hi.", "input": "", "output": None})
    config = tiny_config(model, data, out, **overrides).to_dict()
    return config, words, out


CASES = {
    "output_dir under a file": r"training.output_dir: .*notes.txt/run cannot be created: .*notes.txt is a file, not a folder",
    "output_dir is a file": r"training.output_dir: .*run.txt exists and is not a directory",
    "flash_attention_2 without flash-attn": r"model.attn_implementation=flash_attention_2 needs flash-attn, which is "
    r"not installed; install it or use sdpa",
    "flash_attention_4 with only flash-attn 2": r"model.attn_implementation=flash_attention_4 needs flash-attn-4 "
    r"\(flash_attn.cute\), which is not installed; install it or use sdpa",
    "template chat, tokenizer without chat template": r"data.template=chat: the tokenizer of .* has no chat template",
    "LoRA target_modules not in the model": r"lora.target_modules: query_key_value not found in .*; its modules are "
    r"named .*q_proj",
    "report_to wandb without wandb": r"training.report_to: wandb is not installed \(pip install \"symnoise\[wandb\]\"\)",
    "empty model directory": r"model.name: .*model is an empty folder; it must hold a saved model",
    "model directory without config.json": r"model.name: .*model has no config.json, so it is not a saved model "
    r"\(it holds tokenizer.json\)",
    "model directory without weights": r"model.name: .*model has a config.json but no weights",
    "local model path that does not exist": r"model.name: .*/no/such/model does not exist",
    "hub model name, HF_HUB_OFFLINE=1": r"model.name: symnoise-test/not-cached-model is not a local folder and is not "
    r"in the Hugging Face cache, and HF_HUB_OFFLINE is set",
    "hub model name, hub unreachable": r"model.name: symnoise-test/not-cached-model .* and http://127.0.0.1:9 cannot "
    r"be reached \(.*\); connect to the network, or set model.name to a local",
    "user README.md and config.yaml in output_dir": r"training.output_dir: .*run holds files symnoise did not write "
    r"\(README.md, config.yaml\)",
    "--check with a missing data file": r"missing.json: file not found",
    "--resume with no run": r"--resume: no checkpoint in .*run to resume from",
    "data.max_length shorter than every prompt": r"train.json: every one of the 36 prompts \(alpaca template\) is at "
    r"least max_length=8 tokens long \(the shortest is \d+ tokens\).*"
    r"raise data.max_length above \d+",
    "a null output": r"rows.jsonl:row 2 \(line 3\): field 'output' is null; it must be a non-empty string",
}


@pytest.fixture
def no_model_loading(monkeypatch):
    from symnoise.train import recipe

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad input was reported")

    monkeypatch.setattr(recipe, "load_model", refuse)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_clear_error_before_the_model_loads(
    case, tmp_path, base_model, alpaca_file, monkeypatch, capsys, no_model_loading
):
    config, words, out = setup_case(case, tmp_path, base_model, alpaca_file, monkeypatch)
    config_file = tmp_path / "c.yaml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    existed = out.exists()
    started = time.perf_counter()
    status = main(["train", str(config_file), *words])
    seconds = time.perf_counter() - started
    err = capsys.readouterr().err
    message = [line for line in err.splitlines() if line.startswith("error: ")]
    assert status == 2 and len(message) == 1, err[-2000:]
    import re

    assert re.search(CASES[case], message[0]), message[0]
    if not existed:  # refused, and no run directory left behind
        assert not out.exists()
    elif out.is_dir():
        assert LOCK_FILE not in {p.name for p in out.iterdir()}
    TABLE.append(
        f"| {case} | `{message[0].removeprefix('error: ').replace(str(tmp_path), 'TMP')}` | {seconds:.1f} s |"
    )
    print("\n" + TABLE[-1])


def test_duplicate_keys_and_sections_are_refused(tmp_path, base_model, alpaca_file, capsys):
    config = tiny_config(base_model, alpaca_file, tmp_path / "run").to_dict()
    text = yaml.safe_dump(config, sort_keys=False)
    noise_line = text.splitlines().index("noise:") + 1
    cases = {
        "duplicate key": (
            text.replace("  alpha: 5.0\n", "  alpha: 5.0\n  alpha: 50\n"),
            f"duplicate key noise.alpha at line {noise_line + 3} (first at line {noise_line + 2})",
        ),
        "duplicate section": (
            text + "noise:\n  alpha: 50\n",
            f"duplicate key noise at line {len(text.splitlines()) + 1} (first at line {noise_line})",
        ),
    }
    for name, (body, expected) in cases.items():
        path = tmp_path / f"{name.replace(' ', '_')}.yaml"
        path.write_text(body)
        assert main(["train", str(path), "--check"]) == 2
        err = capsys.readouterr().err
        assert f"error: {path}: not valid YAML ({expected}; each key may appear only once" in err, err
        TABLE.append(
            f"| {name} in the YAML | `{err.strip().removeprefix('error: ').replace(str(tmp_path), 'TMP')}` "
            "| |"
        )
        print("\n" + TABLE[-1])
    assert not (tmp_path / "run").exists()


def test_check_reads_the_data_and_the_model_source(tmp_path, base_model, alpaca_file, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config(base_model, alpaca_file, tmp_path / "run").to_dict()))
    assert main(["train", str(path), "--check"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == f"{path}: config valid"
    assert lines[1] == f"model {base_model}: source and tokenizer ok"
    assert lines[2] == f"data[0]: loaded 36 of 36 rows from {alpaca_file} (format alpaca); template alpaca"
    assert lines[-1] == f"{path}: data valid"
    assert not (tmp_path / "run").exists()


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder this process cannot write: chmod for ordinary users; root ignores modes, so a read-only tmpfs."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"running as root and a read-only tmpfs cannot be mounted: {mounted.stderr.strip()}")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_read_only_output_dir(tmp_path, base_model, alpaca_file, read_only_dir, capsys, no_model_loading):
    for out, expected in [
        (
            read_only_dir / "run",
            f"training.output_dir: {read_only_dir / 'run'} cannot be "
            f"created: {read_only_dir} is not writable",
        ),
        (read_only_dir, f"training.output_dir: cannot write to {read_only_dir} ("),
    ]:
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump(tiny_config(base_model, alpaca_file, out).to_dict()))
        assert main(["train", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {expected}"), err
        TABLE.append(f"| output_dir in a read-only folder | `{err.strip().removeprefix('error: ')}` | |")
        print("\n" + TABLE[-1])


def test_cli_subprocess_wandb_missing_fails_in_seconds_and_writes_nothing(tmp_path, base_model, alpaca_file):
    """The real command: exit 2, one line, no traceback, no run directory (the issue saw it after model load)."""
    out = tmp_path / "run"
    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump(tiny_config(base_model, alpaca_file, out, training__report_to=["wandb"]).to_dict())
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
    proc = subprocess.run(
        [sys.executable, "-m", "symnoise", "train", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (
        'error: training.report_to: wandb is not installed (pip install "symnoise[wandb]"); install '
        "it or remove wandb from training.report_to"
    )
    assert not out.exists()


def test_cli_subprocess_hub_name_offline_fails_in_seconds(tmp_path, alpaca_file):
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(
        PYTHONPATH=str(REPO_ROOT / "src"), HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf")
    )
    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump(tiny_config("meta-llama/Llama-2-7b-hf", alpaca_file, tmp_path / "run").to_dict())
    )
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "symnoise", "train", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    seconds = time.perf_counter() - started
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert (
        "model.name: meta-llama/Llama-2-7b-hf is not a local folder and is not in the Hugging Face cache, and "
        "http://127.0.0.1:9 cannot be reached" in proc.stderr
    )
    assert seconds < 60  # process start and imports included; the probe itself gives up after 5 s
    print(f"\nhub unreachable: refused after {seconds:.1f} s (whole process)")


def test_cli_subprocess_hub_dataset_with_the_hub_unreachable_fails_in_seconds(tmp_path, base_model):
    """Before the probe, datasets retried for about 24 s and the process printed its ConnectionError."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    env.update(
        PYTHONPATH=str(REPO_ROOT / "src"), HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf")
    )
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config(base_model, "tatsu-lab/alpaca", tmp_path / "run").to_dict()))
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "symnoise", "train", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    seconds = time.perf_counter() - started
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert (
        "error: dataset 'tatsu-lab/alpaca' (split 'train') is not a local file and is not in the Hugging Face "
        "cache, and http://127.0.0.1:9 cannot be reached ("
    ) in proc.stderr
    assert not (tmp_path / "run").exists()  # nothing written for a run that could not start
    print(f"\nhub dataset, hub unreachable: refused after {seconds:.1f} s (whole process)")


def test_print_table():
    """Prints the rows collected above (run with -s) for docs/reliability.md."""
    print("\n" + "\n".join(TABLE))
    assert Path(__file__).is_file()
