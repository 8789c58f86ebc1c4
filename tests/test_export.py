"""`symnoise export RUN --merge-lora OUT`: the merged model is plain transformers with the adapter's outputs,
and `generate --backend vllm` on a LoRA run serves that merged copy (vLLM itself: the stand-in module)."""

import json
import subprocess
import sys

import pytest
import torch
from test_train import tiny_config
from test_vllm_backend import make_fake_vllm

from symnoise import export, generation
from symnoise.cli.main import main
from symnoise.train import train


@pytest.fixture(scope="module")
def lora_run(base_model, alpaca_file, tmp_path_factory):
    """A 3-step LoRA run on the tiny Llama; a high learning rate so the adapter moves the outputs."""
    out = tmp_path_factory.mktemp("lora") / "lora-run"
    train(
        tiny_config(
            base_model,
            alpaca_file,
            out,
            lora__enabled=True,
            lora__target_modules=["q_proj", "v_proj"],
            training__max_steps=3,
            training__learning_rate=5e-2,
            training__warmup_ratio=0.0,
        )
    )
    assert (out / "adapter_model.safetensors").is_file() and not (out / "model.safetensors").exists()
    return out


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.floor
def test_merged_model_matches_base_plus_adapter(lora_run, base_model, tmp_path):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = export.merge_lora(lora_run, tmp_path / "merged")
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "symnoise_run.json", "README.md"} <= names
    assert "adapter_config.json" not in names and not list(tmp_path.glob(".merged.partial-*"))
    assert "library_name: transformers" in (out / "README.md").read_text()
    ids = AutoTokenizer.from_pretrained(out)("Add 3 and 4.", return_tensors="pt").input_ids
    merged = AutoModelForCausalLM.from_pretrained(out).eval()  # plain transformers, no adapter involved
    adapted = AutoPeftModelForCausalLM.from_pretrained(str(lora_run)).eval()
    base = AutoModelForCausalLM.from_pretrained(base_model).eval()
    torch.testing.assert_close(logits(merged, ids), logits(adapted, ids), rtol=1e-5, atol=1e-5)
    assert (logits(merged, ids) - logits(base, ids)).abs().max() > 1e-3  # the adapter was not a no-op
    assert generation.resolve_template(out, None) == "alpaca"  # generate finds the run's template


@pytest.mark.floor
def test_export_refusals(lora_run, base_model, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["export", str(tmp_path / "empty"), "--merge-lora", str(tmp_path / "x")]) == 2
    assert "no adapter_config.json" in capsys.readouterr().err
    assert main(["export", str(base_model), "--merge-lora", str(tmp_path / "x")]) == 2
    assert "is a full fine-tune" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "missing"), "--merge-lora", str(tmp_path / "x")]) == 2
    assert "no such run directory" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    assert main(["export", str(lora_run), "--merge-lora", str(taken)]) == 2
    assert "already holds files" in capsys.readouterr().err and (taken / "keep.txt").read_text() == "mine"
    assert main(["export", str(lora_run), "--merge-lora", str(lora_run)]) == 2
    assert "its own directory" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_export_from_the_outside(lora_run, tmp_path):
    out = tmp_path / "served"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "symnoise",
            "export",
            str(lora_run),
            "--merge-lora",
            str(out),
            "--dtype",
            "float32",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"wrote {out}" in proc.stdout and (out / "model.safetensors").is_file()
    assert json.loads((out / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]


def test_vllm_backend_serves_a_lora_run_through_its_merged_copy(lora_run, tmp_path, monkeypatch, capsys):
    fake = make_fake_vllm()
    monkeypatch.setitem(sys.modules, "vllm", fake)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"instruction": "Add 3 and 4.", "dataset": "d"}\n{"instruction": "Add 1 and 2."}\n')
    args = [
        "generate",
        str(lora_run),
        "--backend",
        "vllm",
        "--prompts",
        str(prompts),
        "--output",
        str(tmp_path / "out.json"),
        "--max-length",
        "64",
        "--no-progress",
    ]
    assert main(args) == 0
    merged = lora_run / "merged"
    assert fake.llm_kwargs[0]["model"] == str(merged)
    assert "merging the adapter" in capsys.readouterr().out
    assert (merged / "model.safetensors").is_file() and len(
        json.loads((tmp_path / "out.json").read_text())
    ) == 2
    stamp = (merged / "model.safetensors").stat().st_mtime_ns
    assert (
        main(args[:-5] + ["--output", str(tmp_path / "again.json"), "--max-length", "64", "--no-progress"])
        == 0
    )
    assert fake.llm_kwargs[1]["model"] == str(merged) and "merging" not in capsys.readouterr().out
    assert (merged / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not merged again


@pytest.mark.floor
def test_the_hf_backend_on_the_run_and_vllm_s_merged_copy_run_the_same_weights(lora_run, tmp_path):
    """`generate` (hf) loads the LoRA run as base + adapter; vLLM gets the merged copy: same logits, same tokens."""
    merged = export.merge_lora(lora_run, tmp_path / "merged")
    (run_model, tokenizer), (merged_model, _) = (
        generation.load_model_and_tokenizer(m, "cpu", "float32") for m in (lora_run, merged)
    )
    assert hasattr(run_model, "peft_config") and not hasattr(merged_model, "peft_config")
    ids = tokenizer("Add 3 and 4. Sort 3 1 2.", return_tensors="pt").input_ids
    torch.testing.assert_close(logits(run_model, ids), logits(merged_model, ids), rtol=1e-5, atol=1e-5)
    greedy = [
        m.generate(ids, max_new_tokens=6, do_sample=False)[0].tolist() for m in (run_model, merged_model)
    ]
    assert greedy[0] == greedy[1]
