"""`symnoise generate --backend vllm`, tested with a fake `vllm` module (vLLM itself needs a CUDA GPU).

The fake records what symnoise hands vLLM (engine arguments, one SamplingParams per prompt, the prompts) and
answers with deterministic token ids, so the tests pin the mapping: greedy, the per-prompt budget, the
repetition penalty, the stop ids and the prompt ids of the transformers path, outputs in file order, resume
with pending prompts only, and a clear refusal (exit 2, before any model load) when vLLM is missing.
"""

from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path

import pytest
from conftest import build_tiny_tokenizer, make_tiny_model, snapshot_sidecars

from symnoise import generation, vllm_backend
from symnoise.cli.main import main
from symnoise.generation import DecodingSettings, Prompt
from symnoise.layout import RUN_INFO

EXTRA_EOS = 5  # a second stop id from the model's generation config, beside the tokenizer's </s> (2)
WORDS = (
    "Sort the numbers 3 1 2 in ascending order. Add 12 and 30. Give three tips for staying healthy.".split()
)
PROMPTS = [
    Prompt(" ".join(WORDS[: 2 + (3 * i) % len(WORDS)]), f"set{i % 2}", "1 2" * (i % 3)) for i in range(11)
]


class Interrupt(Exception):
    pass


def fake_continuation(prompt_ids: list[int], max_tokens: int, stop_ids: list[int]) -> list[int]:
    """Deterministic 'greedy' ids from the prompt; every third prompt stops early on a stop id (kept, as vLLM does)."""
    ids = [prompt_ids[(sum(prompt_ids) + 7 * j) % len(prompt_ids)] for j in range(max_tokens)]
    ids = [i for i in ids if i not in stop_ids][:max_tokens]
    if len(prompt_ids) % 3 == 0 and max_tokens > 2:
        ids = ids[:2] + [stop_ids[-1]]
    return ids


def make_fake_vllm() -> types.ModuleType:
    fake = types.ModuleType("vllm")
    fake.llm_kwargs, fake.calls = [], []

    class SamplingParams:
        def __init__(self, **kwargs):
            self.kwargs = kwargs
            self.__dict__.update(kwargs)

    class LLM:
        def __init__(self, **kwargs):
            fake.llm_kwargs.append(kwargs)

        def generate(self, prompts, sampling_params=None, use_tqdm=True):
            assert isinstance(sampling_params, list) and len(sampling_params) == len(prompts)
            fake.calls.append((prompts, sampling_params))
            outputs = []
            for prompt, params in zip(prompts, sampling_params, strict=True):
                assert set(prompt) == {"prompt_token_ids"}  # a TokensPrompt: no text, no re-tokenising
                ids = prompt["prompt_token_ids"]
                new = fake_continuation(ids, params.max_tokens, params.stop_token_ids)
                completion = types.SimpleNamespace(token_ids=tuple(new), text="(vLLM's own detokenisation)")
                outputs.append(types.SimpleNamespace(prompt_token_ids=list(ids), outputs=[completion]))
            return outputs

    fake.SamplingParams, fake.LLM = SamplingParams, LLM
    return fake


@pytest.fixture
def fake_vllm(monkeypatch):
    fake = make_fake_vllm()
    monkeypatch.setitem(sys.modules, "vllm", fake)
    return fake


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A saved tiny Llama run (template alpaca, two stop ids), the transformers path's view of it, and settings."""
    run_dir = tmp_path_factory.mktemp("runs") / "tiny-vllm-run"
    model = make_tiny_model("llama")
    model.generation_config.eos_token_id = [2, EXTRA_EOS]
    model.save_pretrained(run_dir)
    build_tiny_tokenizer().save_pretrained(run_dir)
    (run_dir / RUN_INFO).write_text(json.dumps({"template": "alpaca", "max_length": 512}))
    hf_model, tokenizer = generation.load_model_and_tokenizer(run_dir, device="cpu", dtype="float32")
    ids = generation.prompt_token_ids(tokenizer, PROMPTS, "alpaca")
    assert len({len(row) for row in ids}) >= 4, (
        "prompts must differ in length for per-prompt budgets to differ"
    )
    settings = DecodingSettings(max_length=max(len(row) for row in ids), max_new_tokens=12, batch_size=4)
    return run_dir, hf_model, tokenizer, ids, settings


def _expected_outputs(world) -> list[str]:
    _, hf_model, tokenizer, ids, settings = world
    eos = generation._eos_ids(hf_model, tokenizer)
    return [
        generation.decode_output(tokenizer, fake_continuation(row, settings.budget(len(row)), eos))
        if settings.budget(len(row))
        else ""
        for row in ids
    ]


def _prompt_file(path: Path) -> Path:
    path.write_text(
        "\n".join(
            json.dumps({"instruction": p.instruction, "input": p.input, "dataset": p.dataset})
            for p in PROMPTS
        )
        + "\n"
    )
    return path


def test_cli_hands_vllm_the_hf_paths_prompts_and_decoding(world, fake_vllm, tmp_path, monkeypatch, capsys):
    run_dir, hf_model, tokenizer, ids, settings = world
    monkeypatch.setattr(generation, "load_model_and_tokenizer", _no_load)
    output = tmp_path / "model_outputs.json"
    args = [
        "generate",
        str(run_dir),
        "--backend",
        "vllm",
        "--prompts",
        str(_prompt_file(tmp_path / "p.jsonl")),
        "--output",
        str(output),
        "--max-length",
        str(settings.max_length),
        "--max-new-tokens",
        "12",
        "--chunk-size",
        "4",
        "--dtype",
        "bfloat16",
        "--seed",
        "3",
        "--no-progress",
    ]
    sidecars = snapshot_sidecars(monkeypatch)
    assert main(args) == 0
    assert "with vLLM" in capsys.readouterr().out

    assert fake_vllm.llm_kwargs == [  # the engine holds prompt + response up to --max-length, no more
        {
            "model": str(run_dir),
            "dtype": "bfloat16",
            "trust_remote_code": False,
            "seed": 3,
            "max_model_len": settings.max_length,
        }
    ]
    budgets = [settings.budget(len(row)) for row in ids]
    no_room = [k for k, budget in enumerate(budgets) if budget == 0]
    assert no_room and min(b for b in budgets if b) < 12, (
        "need a prompt without room and a budget below the cap"
    )
    sent = [k for k in range(len(PROMPTS)) if budgets[k]]
    prompts = [p for call_prompts, _ in fake_vllm.calls for p in call_prompts]
    params = [s for _, call_params in fake_vllm.calls for s in call_params]
    assert [p["prompt_token_ids"] for p in prompts] == [
        ids[k] for k in sent
    ]  # the hf path's ids, in file order
    eos = generation._eos_ids(hf_model, tokenizer)
    assert eos == [2, EXTRA_EOS]
    for k, sampling in zip(sent, params, strict=True):
        assert sampling.kwargs == {
            "temperature": 0.0,
            "max_tokens": budgets[k],
            "repetition_penalty": 1.2,
            "stop_token_ids": eos,
            "skip_special_tokens": True,
        }
    chunk_sizes = [len(call_prompts) for call_prompts, _ in fake_vllm.calls]
    assert sum(chunk_sizes) == len(sent) and max(chunk_sizes) <= 4  # a chunk's no-room prompts are not sent

    records = json.loads(output.read_text())
    assert [r["instruction"] for r in records] == [p.instruction for p in PROMPTS]
    assert [r["dataset"] for r in records] == [p.dataset for p in PROMPTS]
    assert [r["output"] for r in records] == _expected_outputs(world)
    assert all(records[k]["output"] == "" for k in no_room)
    assert {r["generator"] for r in records} == {"tiny-vllm-run"}
    assert set(records[0]) == {"instruction", "output", "generator", "dataset"}
    header = json.loads(sidecars[output].splitlines()[0])["header"]
    assert header["backend"] == "vllm"
    assert not generation.sidecar_path(output).exists()  # removed once model_outputs.json is written


def test_resume_sends_only_pending_prompts(world, fake_vllm, tmp_path):
    _, hf_model, tokenizer, ids, settings = world
    llm, eos = fake_vllm.LLM(model="x"), generation._eos_ids(hf_model, tokenizer)

    def run(partial, after_chunk=None):
        return vllm_backend.generate_outputs(
            llm,
            tokenizer,
            eos,
            PROMPTS,
            "alpaca",
            settings,
            partial,
            "g",
            chunk_size=3,
            progress=False,
            after_chunk=after_chunk,
        )

    uninterrupted, _ = run(tmp_path / "full.partial.jsonl")
    assert uninterrupted == _expected_outputs(world)

    def stop_after_two(done: int) -> None:
        if done == 2:
            raise Interrupt

    partial = tmp_path / "cut.partial.jsonl"
    with pytest.raises(Interrupt):
        run(partial, stop_after_two)
    assert (
        len(partial.read_text().splitlines()) == 1 + 6
    )  # header + two chunks of 3, written as they finished
    fake_vllm.calls.clear()
    resumed, stats = run(partial)
    assert resumed == uninterrupted
    assert (stats.resumed, stats.prompts) == (6, len(PROMPTS) - 6)
    sent = [p["prompt_token_ids"] for call_prompts, _ in fake_vllm.calls for p in call_prompts]
    assert sent == [row for row in ids[6:] if settings.budget(len(row))]
    indices = [json.loads(line)["index"] for line in partial.read_text().splitlines()[1:]]
    assert sorted(indices) == list(range(len(PROMPTS)))

    # the other backend never finishes this run, and the hf path's header is unchanged (no backend field)
    assert "backend" not in generation.run_header("alpaca", settings, "g")
    with pytest.raises(ValueError, match="other settings"):
        generation.generate_outputs(
            hf_model, tokenizer, PROMPTS, "alpaca", settings, partial, "g", progress=False
        )


def test_out_of_order_answer_is_refused(world, fake_vllm):
    _, _, _, ids, settings = world

    class Shuffled(fake_vllm.LLM):
        def generate(self, prompts, sampling_params=None, use_tqdm=True):
            return list(reversed(super().generate(prompts, sampling_params, use_tqdm)))

    rows = [row for row in ids if settings.budget(len(row))][:3]
    with pytest.raises(RuntimeError, match="another prompt"):
        vllm_backend.generate_chunk(Shuffled(), rows, settings, [2])


def _no_load(*args, **kwargs):
    raise AssertionError("a model was loaded")


def test_missing_vllm_is_refused_before_loading(world, tmp_path, monkeypatch, capsys):
    run_dir = world[0]
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError, as when not installed
    monkeypatch.setattr(generation, "load_model_and_tokenizer", _no_load)
    monkeypatch.setattr(vllm_backend, "load", _no_load)
    assert not vllm_backend.available()
    args = [
        "generate",
        str(run_dir),
        "--backend",
        "vllm",
        "--prompts",
        str(_prompt_file(tmp_path / "p.jsonl")),
        "--output",
        str(tmp_path / "out.json"),
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert 'pip install "symnoise[vllm]"' in err and "CUDA GPU" in err
    assert (
        not (tmp_path / "out.json").exists() and not generation.sidecar_path(tmp_path / "out.json").exists()
    )


def test_vllm_options_checked_before_loading(world, fake_vllm, tmp_path, monkeypatch, capsys):
    run_dir = world[0]
    monkeypatch.setattr(vllm_backend, "load", _no_load)
    base = [
        "generate",
        str(run_dir),
        "--backend",
        "vllm",
        "--prompts",
        str(_prompt_file(tmp_path / "p.jsonl")),
        "--output",
        str(tmp_path / "out.json"),
    ]
    assert main([*base, "--device", "cuda:1"]) == 2
    assert "CUDA_VISIBLE_DEVICES" in capsys.readouterr().err
    assert main([*base, "--chunk-size", "0"]) == 2
    assert "--chunk-size" in capsys.readouterr().err
    assert fake_vllm.llm_kwargs == []


def test_dtype_mapping():
    import torch

    assert vllm_backend.vllm_dtype("float16") == "float16"
    assert vllm_backend.vllm_dtype("bfloat16") == "bfloat16"
    if not torch.cuda.is_available():
        assert vllm_backend.vllm_dtype("auto") == "auto"
    with pytest.raises(ValueError, match="unknown dtype"):
        vllm_backend.vllm_dtype("int8")


def test_stop_ids_from_the_generation_config(world, tmp_path):
    """The generation config read for the stop ids is the run's own file, as `from_pretrained` reads it."""
    run_dir = world[0]
    copy = Path(shutil.copytree(run_dir, tmp_path / "copy"))
    (copy / "generation_config.json").unlink()  # then derived from config.json, as transformers does
    tokenizer = world[2]
    config = vllm_backend._generation_config(copy, trust_remote_code=False)
    assert generation.eos_token_ids(config, tokenizer) == [2]
    assert generation.eos_token_ids(vllm_backend._generation_config(run_dir, False), tokenizer) == [
        2,
        EXTRA_EOS,
    ]
