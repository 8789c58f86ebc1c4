"""Every data format end to end through `symnoise train` on a tiny model (two steps, SymNoise attached), a
mixture through the real command, and `symnoise train --check` on good and bad data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from symnoise.train import train
from symnoise.train.config import validate_config


def m(role, content):
    return {"role": role, "content": content}


def s(who, value):
    return {"from": who, "value": value}


# format name: (rows, expected detected format, conversations, assistant turns)
FORMAT_FILES = {
    "alpaca": (
        [
            {"instruction": f"Add {k} and 2.", "input": "" if k % 2 else "numbers", "output": str(k + 2)}
            for k in range(6)
        ],
        "alpaca",
        0,
        0,
    ),
    "evol-instruct": (
        [{"instruction": f"Add {k} and 2.", "output": str(k + 2)} for k in range(6)],
        "evol-instruct",
        0,
        0,
    ),
    "openplatypus": (
        [
            {"instruction": f"Add {k} and 2.", "input": "", "output": str(k + 2), "data_source": "x"}
            for k in range(6)
        ],
        "openplatypus",
        0,
        0,
    ),
    "dolly": (
        [
            {"instruction": f"Add {k} and 2.", "context": "numbers", "response": str(k + 2), "category": "qa"}
            for k in range(6)
        ],
        "dolly",
        0,
        0,
    ),
    "sharegpt": (
        [
            {
                "conversations": [
                    s("human", f"Add {k} and 2."),
                    s("gpt", str(k + 2)),
                    s("human", "Again?"),
                    s("gpt", "Yes."),
                ]
            }
            for k in range(6)
        ],
        "sharegpt",
        6,
        12,
    ),
    "sharegpt-role-content": (
        [{"conversations": [m("user", f"Add {k} and 2."), m("assistant", str(k + 2))]} for k in range(6)],
        "sharegpt",
        6,
        6,
    ),
    "messages": (
        [
            {"messages": [m("system", "Be brief."), m("user", f"Add {k} and 2."), m("assistant", str(k + 2))]}
            for k in range(6)
        ],
        "messages",
        6,
        6,
    ),
    "prompt-completion": (
        [{"prompt": f"Add {k} and 2. Answer:", "completion": f" {k + 2}"} for k in range(6)],
        "prompt-completion",
        0,
        0,
    ),
    "prompt-completion-conversational": (
        [
            {"prompt": [m("user", f"Add {k} and 2.")], "completion": [m("assistant", str(k + 2))]}
            for k in range(6)
        ],
        "prompt-completion",
        6,
        6,
    ),
}


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def config_data(model, data: dict, out: Path) -> dict:
    return {
        "model": {"name": str(model)},
        "data": {"max_length": 192, **data},
        "noise": {"method": "symnoise", "alpha": 5.0, "seed": 0},
        "training": {
            "output_dir": str(out),
            "max_steps": 2,
            "per_device_batch_size": 2,
            "effective_batch_size": 2,
            "learning_rate": 1e-3,
            "save_steps": 100,
            "report_to": [],
            "device": "cpu",
            "seed": 0,
        },
    }


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FORMAT_FILES))
def test_every_format_trains_with_noise(base_model, tmp_path, name):
    rows, detected, conversations, turns = FORMAT_FILES[name]
    path = write_jsonl(tmp_path / f"{name}.jsonl", rows)
    out = tmp_path / "run"
    result = train(validate_config(config_data(base_model, {"path": str(path)}, out)))
    report = json.loads((out / "data_report.json").read_text())
    assert result.steps == 2 and result.final_loss is not None
    assert (report["format"], report["rows"], report["examples"]) == (detected, 6, 6)
    assert (report["conversations"], report["assistant_turns"]) == (conversations, turns)
    assert report["turns_trained"] == max(turns, 6) and report["turns_truncated"] == 0
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["noise_norm"] for line in metrics if "loss" in line] == pytest.approx(
        [5 / 3**0.5] * 2, rel=1e-5
    )


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    """A tiny Llama with a ChatML tokenizer (two added special tokens, vocabulary 402 < 410 embeddings)."""
    from conftest import build_tiny_tokenizer, make_tiny_model

    path = tmp_path_factory.mktemp("chat-model")
    make_tiny_model("llama", vocab_size=410).save_pretrained(path)
    tokenizer = build_tiny_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.slow
def test_mixture_with_the_chat_template_through_the_command(chat_model, tmp_path):
    alpaca = write_jsonl(tmp_path / "alpaca.jsonl", FORMAT_FILES["alpaca"][0])
    sharegpt = write_jsonl(tmp_path / "sharegpt.jsonl", FORMAT_FILES["sharegpt"][0])
    out = tmp_path / "run"
    data = {
        "template": "chat",
        "datasets": [{"path": str(alpaca), "limit": 4}, {"path": str(sharegpt), "weight": 2}],
    }
    config = tmp_path / "mix.yaml"
    config.write_text(yaml.safe_dump(config_data(chat_model, data, out)))
    proc = subprocess.run(
        [sys.executable, "-m", "symnoise", "train", str(config)], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sharegpt.jsonl (format sharegpt); 6 conversations with 12 assistant turns" in proc.stderr
    assert "mixture: 4 examples of" in proc.stderr and "12 examples of" in proc.stderr
    report = json.loads((out / "data_report.json").read_text())
    assert [(d["format"], d["template"], d["selected"]) for d in report["datasets"]] == [
        ("alpaca", "chat", 4),
        ("sharegpt", "chat", 12),
    ]
    assert report["examples"] == 16 and report["datasets"][1]["turns_trained"] == 12
    assert json.loads((out / "symnoise_run.json").read_text())["template"] == "chat"


@pytest.mark.slow
def test_check_reads_the_data_with_the_tokenizer(base_model, tmp_path):
    rows = FORMAT_FILES["alpaca"][0] + [{"instruction": "no output"}] + FORMAT_FILES["alpaca"][0]
    path = write_jsonl(tmp_path / "data.jsonl", rows)
    shared = {"path": str(path)}

    def check(data: dict, name: str) -> subprocess.CompletedProcess:
        config = tmp_path / f"{name}.yaml"
        config.write_text(yaml.safe_dump(config_data(base_model, data, tmp_path / name)))
        return subprocess.run(
            [sys.executable, "-m", "symnoise", "train", str(config), "--check"],
            capture_output=True,
            text=True,
            timeout=300,
        )

    bad = check(shared, "bad")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert f"error: {path}:row 6 (line 7): field 'output' is missing" in bad.stderr
    skipping = check({**shared, "on_bad_row": "skip"}, "skip")
    assert skipping.returncode == 0, skipping.stderr
    assert (
        f"data[0]: loaded 12 of 13 rows from {path} (format alpaca); skipped 1 row: 1 missing output"
        in skipping.stdout
    )
    assert f"data[0]: first bad row: {path}:row 6 (line 7): field 'output' is missing" in skipping.stdout
    assert "data[0]: rendered and tokenised the first 12 records: 12 examples" in skipping.stdout
    assert skipping.stdout.rstrip().endswith("data valid")
    assert not (tmp_path / "skip").exists()  # --check writes nothing
    missing = check({"path": str(tmp_path / "missing.json")}, "missing")
    assert missing.returncode == 2 and f"error: {tmp_path / 'missing.json'}: file not found" in missing.stderr
    mixture = check(
        {"datasets": [{"path": str(path), "limit": 3}, {"path": str(tmp_path / "gone.jsonl")}]}, "mix"
    )
    assert mixture.returncode == 2 and "gone.jsonl: file not found" in mixture.stderr


def test_shipped_sharegpt_configs_keep_the_papers_single_turn_protocol(monkeypatch):
    from conftest import REPO_ROOT

    from symnoise.grid.cells import expand_cells
    from symnoise.grid.sections import GridSpec
    from symnoise.train import load_config

    monkeypatch.chdir(REPO_ROOT)
    for path in sorted((REPO_ROOT / "configs" / "llama2-7b").glob("sharegpt-*.yaml")):
        assert load_config(path).data.turns == "first", path
    for path in sorted((REPO_ROOT / "configs" / "llama2-7b").glob("alpaca-*.yaml")):
        assert load_config(path).data.turns == "all", path
    grid_file = REPO_ROOT / "configs" / "grid" / "paper-table1.yaml"
    cells = expand_cells(GridSpec.model_validate(yaml.safe_load(grid_file.read_text())), str(grid_file))
    turns = {cell.config.data.format: cell.config.data.turns for cell in cells}
    assert turns["sharegpt"] == "first" and turns["alpaca"] == "all"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"path": "a.json", "datasets": [{"path": "b.json"}]},
            "data: give either path (one source) or datasets",
        ),
        ({}, "data: give either path (one source) or datasets"),
        (
            {"datasets": [{"path": "b.json", "weight": 2, "limit": 3}]},
            "data.datasets.0: set weight or limit, not both",
        ),
        (
            {"datasets": [{"path": "b.json"}], "limit": 3},
            "data: limit applies to path; with datasets, set limit on each",
        ),
        (
            {"datasets": [{"path": "b.json", "weight": 0}]},
            "data.datasets.0.weight: Input should be greater than 0",
        ),
        (
            {"datasets": [{"path": "b.json", "turns": "some"}]},
            "data.datasets.0.turns: Input should be 'all' or 'first'",
        ),
        ({"datasets": [{"path": "b.json", "shuffle": True}]}, "data.datasets.0.shuffle: unknown field"),
    ],
)
def test_data_section_validation_names_the_field(data, message):
    from symnoise.train import ConfigError

    with pytest.raises(ConfigError) as error:
        validate_config(
            {"model": {"name": "m"}, "data": data, "training": {"output_dir": "o"}}, source="c.yaml"
        )
    assert message in str(error.value)


def test_mixture_entries_take_the_section_defaults():
    from symnoise.data.mixture import specs_from_section

    config = validate_config(
        {
            "model": {"name": "m"},
            "training": {"output_dir": "o"},
            "data": {
                "template": "chat",
                "turns": "first",
                "on_bad_row": "skip",
                "eval_path": "e.json",
                "datasets": [
                    {"path": "a.json", "limit": 5},
                    {"path": "b.json", "format": "sharegpt", "turns": "all", "weight": 0.5},
                ],
            },
        }
    )
    specs, eval_spec = specs_from_section(config.data)
    assert [(s.path, s.format, s.template, s.turns, s.limit, s.weight, s.on_bad_row) for s in specs] == [
        ("a.json", "auto", "chat", "first", 5, None, "skip"),
        ("b.json", "sharegpt", "chat", "all", None, 0.5, "skip"),
    ]
    assert (eval_spec.path, eval_spec.format, eval_spec.template) == ("e.json", "auto", "chat")
    assert config.data.source_label == "a.json + b.json"
