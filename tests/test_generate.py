"""`symnoise generate`: batched equals unbatched, resume equals uninterrupted, order kept, bad input refused early."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import snapshot_sidecars

from symnoise import generation, synthetic
from symnoise.cli.main import main
from symnoise.data import Example, render_prompt, tokenize_examples
from symnoise.generation import DecodingSettings, Prompt, PromptFileError
from symnoise.layout import RUN_INFO

N_PROMPTS = 12
EXTRA_TOKENS = 24  # max_length = longest prompt + this, so budgets differ between prompts


class Interrupt(Exception):
    pass


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run ~20x faster on one thread when other processes share the cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A saved tiny Llama run directory, its prompts (varied lengths) and the settings used throughout."""
    import torch
    import transformers

    train, evaluation = synthetic.make_task_examples(110, 22, seed=1)
    tokenizer = synthetic.train_tokenizer(synthetic.tokenizer_corpus(train), vocab_size=512)
    config = synthetic.tiny_llama_config(
        len(tokenizer), hidden_size=64, layers=2, heads=4, initializer_range=0.2
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():  # EOS wins often enough that some rows stop early and others run to budget; and
        model.lm_head.weight[synthetic.EOS_ID] *= 1.3  # a strong <pad> logit, so that penalising the padding
        model.lm_head.weight[synthetic.PAD_ID] *= 1.6  # as if it were prompt text would change outputs
    run_dir = tmp_path_factory.mktemp("runs") / "tiny-run"
    model.save_pretrained(run_dir)
    tokenizer.save_pretrained(run_dir)
    (run_dir / RUN_INFO).write_text(
        json.dumps({"template": "alpaca", "max_length": 512, "noise": {"method": "none"}})
    )
    prompts = [
        Prompt(e.instruction + " " * (i % 3) + "Answer briefly." * (i % 4), f"set{i % 2}", e.input)
        for i, e in enumerate(evaluation[:N_PROMPTS])
    ]
    model, tokenizer = generation.load_model_and_tokenizer(run_dir, device="cpu", dtype="float32")
    longest = max(len(ids) for ids in generation.prompt_token_ids(tokenizer, prompts, "alpaca"))
    settings = DecodingSettings(max_length=longest + EXTRA_TOKENS, batch_size=4)
    return run_dir, model, tokenizer, prompts, settings


def test_the_model_is_loaded_straight_onto_its_device(world, monkeypatch):
    """`from_pretrained` places the weights (``device_map``): no host copy of the whole model first, then a move,
    which for a 7B model in bf16 is 14 GB of host memory and a slower load."""
    import transformers

    run_dir = world[0]
    seen = []
    real = transformers.AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        seen.append(kwargs.get("device_map"))
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    model, _ = generation.load_model_and_tokenizer(run_dir, device="cpu", dtype="float32")
    assert seen == ["cpu"]
    assert {p.device.type for p in model.parameters()} == {"cpu"} and not model.training


def _prompt_file(path: Path, prompts) -> Path:
    path.write_text(
        "\n".join(
            json.dumps({"instruction": p.instruction, "input": p.input, "dataset": p.dataset})
            for p in prompts
        )
        + "\n"
    )
    return path


def _run(world, partial: Path, **kwargs):
    _, model, tokenizer, prompts, settings = world
    return generation.generate_outputs(
        model, tokenizer, prompts, "alpaca", settings, partial, "tiny-run", progress=False, **kwargs
    )


def _unbatched(world) -> tuple[list[str], list[int]]:
    """Reference: one plain `model.generate` per prompt, no padding, transformers' own repetition penalty."""
    import torch

    _, model, tokenizer, prompts, settings = world
    outputs, lengths = [], []
    for p in prompts:
        text = render_prompt(Example(p.instruction, p.input, "", p.dataset), "alpaca")
        ids = torch.tensor([tokenizer(text)["input_ids"]])
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=settings.max_length - ids.shape[1],
            repetition_penalty=1.2,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        outputs.append(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip())
        lengths.append(out.shape[1] - ids.shape[1])
    return outputs, lengths


def test_prompt_ids_match_training_tokenisation(world):
    _, _, tokenizer, prompts, _ = world
    examples = [Example(p.instruction, p.input, "x", p.dataset) for p in prompts]
    trained = tokenize_examples(examples, tokenizer, "alpaca", max_length=512)
    expected = [
        [t for t, label in zip(item["input_ids"], item["labels"], strict=True) if label == -100]
        for item in trained
    ]
    assert generation.prompt_token_ids(tokenizer, prompts, "alpaca") == expected
    assert all(ids[0] == tokenizer.bos_token_id for ids in expected)


@pytest.mark.floor
def test_batched_equals_unbatched(world, tmp_path):
    _, _, tokenizer, prompts, settings = world
    lengths = [len(ids) for ids in generation.prompt_token_ids(tokenizer, prompts, "alpaca")]
    assert len(set(lengths)) >= 4, "prompts must differ in length for left padding to matter"
    reference, new_counts = _unbatched(world)
    budgets = [settings.budget(n) for n in lengths]
    stopped_early = sum(c < b for c, b in zip(new_counts, budgets, strict=True))
    print(
        f"\nprompt lengths {sorted(set(lengths))}; {stopped_early}/{N_PROMPTS} stopped at EOS before their budget"
    )
    assert 0 < stopped_early < N_PROMPTS, "need rows that stop at EOS and rows that run to their budget"
    outputs, stats = _run(world, tmp_path / "p.partial.jsonl")
    assert outputs == reference
    assert stats.new_tokens == sum(new_counts) and stats.prompts == N_PROMPTS


def test_batch_size_does_not_change_outputs(world, tmp_path):
    run_dir, model, tokenizer, prompts, settings = world
    outputs = {}
    for size in (1, 5):
        sized = DecodingSettings(max_length=settings.max_length, batch_size=size)
        outputs[size], _ = generation.generate_outputs(
            model, tokenizer, prompts, "alpaca", sized, tmp_path / f"{size}.jsonl", "g", progress=False
        )
    assert outputs[1] == outputs[5]


def test_prompt_without_room_gets_empty_output(world, tmp_path):
    _, model, tokenizer, prompts, _ = world
    lengths = [len(ids) for ids in generation.prompt_token_ids(tokenizer, prompts, "alpaca")]
    settings = DecodingSettings(max_length=sorted(lengths)[len(lengths) // 2] + 1, batch_size=N_PROMPTS)
    outputs, stats = generation.generate_outputs(
        model, tokenizer, prompts, "alpaca", settings, tmp_path / "p.jsonl", "g", progress=False
    )
    no_room = [n >= settings.max_length for n in lengths]
    assert stats.no_room == sum(no_room) > 0
    assert all(output == "" for output, full in zip(outputs, no_room, strict=True) if full)
    assert stats.new_tokens <= sum(settings.budget(n) for n in lengths)


def test_batches_sorted_by_length():
    assert generation.plan_batches([5, 9, 1, 9, 3], [0, 1, 2, 3, 4], 2) == [[1, 3], [0, 4], [2]]
    assert generation.plan_batches([5, 9, 1, 9, 3], [0, 2, 4], 2) == [[0, 4], [2]]


def test_budget_is_per_prompt():
    settings = DecodingSettings()
    assert (settings.budget(24), settings.budget(1024), settings.budget(2000)) == (1000, 0, 0)
    assert DecodingSettings(max_new_tokens=10).budget(24) == 10


def _stop_after(batches: int):
    def after_batch(done: int) -> None:
        if done == batches:
            raise Interrupt

    return after_batch


def test_resume_after_interruption_equals_uninterrupted(world, tmp_path):
    uninterrupted, _ = _run(world, tmp_path / "full.partial.jsonl")
    partial = tmp_path / "cut.partial.jsonl"
    with pytest.raises(Interrupt):
        _run(world, partial, after_batch=_stop_after(2))
    lines = partial.read_text().splitlines()
    assert len(lines) == 1 + 2 * world[4].batch_size  # header + two batches
    with open(partial, "a") as handle:  # a write cut short by the kill
        handle.write('{"index": 99, "instruction": "tor')
    resumed, stats = _run(world, partial)
    assert resumed == uninterrupted
    assert (stats.resumed, stats.prompts) == (8, 4)
    records = [json.loads(line) for line in partial.read_text().splitlines()[1:]]
    assert sorted(r["index"] for r in records) == list(range(N_PROMPTS))


def test_resume_refuses_other_settings(world, tmp_path):
    _, model, tokenizer, prompts, settings = world
    partial = tmp_path / "x.partial.jsonl"
    with pytest.raises(Interrupt):
        _run(world, partial, after_batch=_stop_after(1))
    other = DecodingSettings(max_length=settings.max_length + 1, batch_size=settings.batch_size)
    with pytest.raises(ValueError, match="other settings"):
        generation.generate_outputs(
            model, tokenizer, prompts, "alpaca", other, partial, "tiny-run", progress=False
        )


@pytest.mark.floor
def test_cli_resumes_and_writes_alpaca_eval_file_in_order(world, tmp_path, capsys):
    run_dir, _, _, prompts, settings = world
    prompt_file = _prompt_file(tmp_path / "prompts.jsonl", prompts)
    uninterrupted, _ = _run(world, tmp_path / "ref.partial.jsonl")
    output = tmp_path / "out" / "model_outputs.json"
    output.parent.mkdir()
    with pytest.raises(Interrupt):
        _run(world, generation.sidecar_path(output), after_batch=_stop_after(1))
    args = [
        "generate",
        str(run_dir),
        "--prompts",
        str(prompt_file),
        "--output",
        str(output),
        "--batch-size",
        "3",
        "--max-length",
        str(settings.max_length),
        "--device",
        "cpu",
        "--no-progress",
    ]
    assert main(args + ["--name", "other", "--device", "no-such-device"]) == 2  # refused before loading
    assert "other settings" in capsys.readouterr().err
    assert main(args) == 0
    printed = capsys.readouterr().out
    print(printed)
    assert "4 resumed" in printed and "tokens/s" in printed
    records = json.loads(output.read_text())
    assert [r["instruction"] for r in records] == [p.instruction for p in prompts]
    assert [r["dataset"] for r in records] == [p.dataset for p in prompts]
    assert [r["output"] for r in records] == uninterrupted
    assert {r["generator"] for r in records} == {"tiny-run"}
    assert set(records[0]) == {"instruction", "output", "generator", "dataset"}
    assert not list(output.parent.glob("*.tmp"))
    assert sorted(p.name for p in output.parent.iterdir()) == [
        "model_outputs.json"
    ]  # no *.partial.jsonl left


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"instruction": "a", "dataset": "d"}\n{"dataset": "d"}\n', r"line 2: missing field 'instruction'"),
        (
            '[{"instruction": "a"}, {"instruction": 5}]',
            r"row 1: field 'instruction' must be a string, got int",
        ),
        ('{"instruction": "a", "input": ["x"]}\n', r"line 1: field 'input' must be a string, got list"),
        (
            '{"instruction": "a", "dataset": null}\n',
            r"line 1: field 'dataset' must be a string, got NoneType",
        ),
        ('["just text"]', r"row 0: expected a JSON object, got str"),
        ('{"instruction": "a"}\n{"instruction": \n', r"line 2: not valid JSON"),
        ('{"instruction": "   "}\n', r"line 1: field 'instruction' is empty"),
        ("", r"no prompts"),
    ],
)
def test_bad_prompt_files(tmp_path, content, message):
    path = _write(tmp_path / "bad.jsonl", content)
    with pytest.raises(PromptFileError, match=message) as error:
        generation.load_prompts(path)
    assert str(path) in str(error.value)


def test_missing_prompt_file(tmp_path):
    with pytest.raises(PromptFileError, match="not found"):
        generation.load_prompts(tmp_path / "nope.json")


def test_cli_rejects_bad_input_before_loading_the_model(tmp_path, capsys):
    bad = _write(tmp_path / "bad.json", '[{"instruction": "a"}, {"dataset": "x"}]')
    no_model = tmp_path / "no-such-model"
    assert main(["generate", str(no_model), "--prompts", str(bad), "--template", "alpaca"]) == 2
    assert f"{bad}: row 1: missing field 'instruction'" in capsys.readouterr().err
    good = _write(tmp_path / "good.json", '[{"instruction": "a"}]')
    no_model.mkdir()
    assert main(["generate", str(no_model), "--prompts", str(good)]) == 2
    assert "pass the template explicitly" in capsys.readouterr().err
    assert main(["generate", "org/hub-model", "--prompts", str(good), "--template", "alpaca"]) == 2
    assert "--output is required" in capsys.readouterr().err


def test_template_from_run_config(tmp_path):
    (tmp_path / RUN_INFO).write_text('{"template": "vicuna", "max_length": 512}')
    assert generation.resolve_template(tmp_path, None) == "vicuna"
    assert generation.resolve_template(tmp_path, "alpaca") == "alpaca"
    with pytest.raises(ValueError, match="pass the template explicitly"):
        generation.resolve_template(tmp_path / "elsewhere", None)


def test_default_prompts_are_the_ae1_reference(shared_data, monkeypatch):
    from symnoise.cli.generate import default_prompts

    monkeypatch.setenv("SYMNOISE_DATA_DIR", str(shared_data))
    path = default_prompts()
    prompts = generation.load_prompts(path)
    assert path.name == "alpaca_eval_ae1_reference_text_davinci_003.jsonl" and len(prompts) == 805
    assert prompts[0].instruction.startswith("What are the names of some famous actors")


@pytest.mark.slow
def test_cli_killed_mid_run_resumes_to_the_uninterrupted_result(world, tmp_path, monkeypatch):
    """A real SIGKILL after the first batch reached disk; the rerun completes every prompt exactly once."""
    import os
    import signal
    import subprocess
    import sys
    import time

    run_dir, _, _, prompts, settings = world
    prompt_file = _prompt_file(tmp_path / "prompts.jsonl", prompts)
    args = [
        "generate",
        str(run_dir),
        "--prompts",
        str(prompt_file),
        "--batch-size",
        "2",
        "--device",
        "cpu",
        "--max-length",
        str(settings.max_length + 200),
        "--no-progress",
    ]
    killed = tmp_path / "killed" / "model_outputs.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "symnoise.cli.main", *args, "--output", str(killed)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    partial = generation.sidecar_path(killed)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if partial.is_file() and len(partial.read_bytes().splitlines()) >= 3:  # header + one batch
            break
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    done_before = len(partial.read_text().splitlines()) - 1
    print(f"\nkilled with {done_before}/{N_PROMPTS} prompts on disk")
    assert 2 <= done_before < N_PROMPTS and not killed.exists()

    sidecars = snapshot_sidecars(monkeypatch)
    assert main([*args, "--output", str(killed)]) == 0
    fresh = tmp_path / "fresh" / "model_outputs.json"
    assert main([*args, "--output", str(fresh)]) == 0
    assert json.loads(killed.read_text()) == json.loads(fresh.read_text())
    assert not partial.exists()  # removed once model_outputs.json is written
    indices = [json.loads(line)["index"] for line in sidecars[killed].splitlines()[1:]]
    assert sorted(indices) == list(range(N_PROMPTS))
