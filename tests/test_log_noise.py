"""What the commands print: the start-of-training summary, once; no progress bars in a log file (lines instead);
and none of the other libraries' messages that tell the user nothing (DeepSpeed's "Setting accelerator to CPU",
peft's FutureWarning about ``is_gradient_checkpointing``, lm-eval's per-request "Combined length" warning, git's
"not a git repository"), while those libraries' other messages still pass.

The commands run for real in subprocesses with stdout and stderr going to a file, as in a batch job."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import warnings

import pytest
import yaml
from conftest import REPO_ROOT
from test_train import tiny_config

from symnoise.quiet import (
    LM_EVAL_LOGGER,
    LM_EVAL_TRUNCATION,
    ProgressLines,
    dropped_messages,
    quiet_known_warnings,
)
from symnoise.train.summary import parameter_counts, summary_lines

ENV = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "OMP_NUM_THREADS": "1"}


def run_to_log(args, log, cwd, python_args=("-m", "symnoise")):
    """Run ``python -m symnoise ARGS`` with stdout and stderr into the file ``log``; returns (status, text)."""
    env = {k: v for k, v in ENV.items() if k not in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS")}
    with log.open("w") as handle:
        proc = subprocess.run(
            [sys.executable, *python_args, *map(str, args)],
            stdout=handle,
            stderr=handle,
            cwd=cwd,
            env=env,
            timeout=300,
        )
    return proc.returncode, log.read_text()


# ------------------------------------------------------------------------------------------ symnoise train
@pytest.fixture(scope="module")
def lora_run(base_model, alpaca_file, tmp_path_factory):
    """A 3-step LoRA run of the real command, its log in a file: (config, run directory, log text)."""
    folder = tmp_path_factory.mktemp("lora-log")
    config = tiny_config(
        base_model,
        alpaca_file,
        folder / "run",
        training__max_steps=3,
        training__report_to=[],
        lora__enabled=True,
        lora__target_modules=["q_proj", "v_proj"],
    )
    path = folder / "c.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    status, text = run_to_log(["train", path], folder / "log.txt", folder)
    assert status == 0, text[-3000:]
    return config, folder / "run", text


def test_a_lora_run_logs_no_library_noise_and_no_bars(lora_run):
    _, _, text = lora_run
    assert "Setting accelerator to CPU" not in text  # DeepSpeed (dev extra) is imported by the Trainer
    assert "FutureWarning" not in text and "is_gradient_checkpointing" not in text
    assert "\r" not in text and "it/s]" not in text


def test_a_run_logs_one_summary_before_training(lora_run, base_model):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    config, run_dir, text = lora_run
    # what the summary must say, found independently: peft's own count, the run's data report
    lora = config.lora
    with warnings.catch_warnings():
        quiet_known_warnings()
        model = get_peft_model(
            AutoModelForCausalLM.from_pretrained(base_model),
            LoraConfig(
                r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules
            ),
        )
    trainable, total = model.get_nb_trainable_parameters()
    report = json.loads((run_dir / "data_report.json").read_text())
    examples, tokens = report["examples"], report["tokens"]
    mean = tokens / examples
    expected = [
        f"training: 3 optimizer steps (training.max_steps) on {examples} examples",
        f"  parameters: {trainable:,} trainable of {total:,} ({100 * trainable / total:.2f}%)",
        "  effective batch: 8 examples per step = 4 per device x 2 accumulation steps x 1 process",
        f"  tokens per step: {round(mean * 8):,} on average (mean example {mean:.1f} tokens x 8); at most 768 "
        "(max_length 96 x 8)",
    ]
    lines = text.splitlines()
    assert expected[0] in lines, text[-3000:]
    start = lines.index(expected[0])
    assert lines[start : start + 4] == expected
    assert text.count("optimizer steps (") == 1 and text.count("  parameters: ") == 1
    assert start < min(i for i, line in enumerate(lines) if line.startswith("{'loss'"))  # before training


def test_the_summary_block_in_words():
    assert summary_lines(
        steps=1218,
        epochs=3.0,
        examples=52002,
        trainable=8_798_208,
        total=502_830_976,
        per_device=8,
        accumulation=4,
        processes=2,
        lengths=[100, 200, 301],
        max_length=1024,
        resumed_at=500,
    ) == [
        "training: 1,218 optimizer steps (3 epochs) on 52,002 examples, resuming after step 500",
        "  parameters: 8,798,208 trainable of 502,830,976 (1.75%)",
        "  effective batch: 64 examples per step = 8 per device x 4 accumulation steps x 2 processes",
        "  tokens per step: 12,821 on average (mean example 200.3 tokens x 64); at most 65,536 (max_length 1024 x 64)",
    ]
    assert summary_lines(
        steps=10,
        epochs=None,
        examples=80,
        trainable=5,
        total=5,
        per_device=8,
        accumulation=1,
        processes=1,
        lengths=None,
        max_length=512,
    )[1:] == [
        "  parameters: 5 trainable of 5 (100.00%)",
        "  effective batch: 8 examples per step = 8 per device x 1 accumulation steps x 1 process",
        "  tokens per step: at most 4,096 (max_length 512 x 8); the examples' lengths are not known",
    ]


def test_parameter_counts_of_a_full_model(tiny_model_factory):
    model = tiny_model_factory("llama")
    every = sum(p.numel() for p in model.parameters())
    assert parameter_counts(model) == (every, every)
    model.get_input_embeddings().weight.requires_grad_(False)
    assert parameter_counts(model) == (every - model.get_input_embeddings().weight.numel(), every)


# ------------------------------------------------------------------------------------------ other libraries
def test_the_deepspeed_cpu_notice_is_dropped_and_its_other_warnings_kept(tmp_path):
    pytest.importorskip("deepspeed")  # in the dev extra
    code = (
        "import sys; {quiet}import deepspeed; from deepspeed.accelerator import get_accelerator; get_accelerator(); "
        "from deepspeed.utils import logger; logger.warning('another DeepSpeed warning')"
    )
    env = {k: v for k, v in ENV.items() if k != "DS_ACCELERATOR"}
    env["CUDA_VISIBLE_DEVICES"] = ""  # no GPU: DeepSpeed falls back to its CPU accelerator and says so
    plain = subprocess.run(
        [sys.executable, "-c", code.format(quiet="")], capture_output=True, text=True, env=env, timeout=120
    )
    assert "Setting accelerator to CPU" in plain.stdout + plain.stderr  # what the filter is for
    quiet = subprocess.run(
        [
            sys.executable,
            "-c",
            code.format(quiet="from symnoise.quiet import quiet_command_output; quiet_command_output(); "),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    output = quiet.stdout + quiet.stderr
    assert quiet.returncode == 0, output
    assert "Setting accelerator to CPU" not in output and "another DeepSpeed warning" in output


def test_only_the_peft_checkpointing_future_warning_is_ignored():
    message = "`is_gradient_checkpointing` is deprecated and will be removed in v6. Use `is_activation_checkpointing`"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_known_warnings()
        warnings.warn_explicit(
            message, FutureWarning, "modeling_utils.py", 1, module="transformers.modeling_utils"
        )
        warnings.warn_explicit(
            "another", FutureWarning, "modeling_utils.py", 2, module="transformers.modeling_utils"
        )
        warnings.warn_explicit(message, FutureWarning, "elsewhere.py", 3, module="somebody.else")
        warnings.warn_explicit(
            message, UserWarning, "modeling_utils.py", 4, module="transformers.modeling_utils"
        )
    assert [(str(w.message)[:7], w.lineno) for w in caught] == [
        ("another", 2),
        (message[:7], 3),
        (message[:7], 4),
    ]


def test_lm_eval_truncation_warnings_are_dropped_and_counted_while_others_pass(caplog):
    logger = logging.getLogger(LM_EVAL_LOGGER)
    first = "Combined length of context (900) and continuation (2) exceeds model's maximum length (256)."
    with caplog.at_level(logging.WARNING, logger=LM_EVAL_LOGGER):
        with dropped_messages(LM_EVAL_LOGGER, LM_EVAL_TRUNCATION) as truncation:
            logger.warning(first)
            logger.warning("Passed an unknown argument")
            logger.warning("Combined length of context (700) and continuation (1) exceeds ...")
        logger.warning("Combined length of context (1) after the run")  # the filter is gone
    assert caplog.messages == ["Passed an unknown argument", "Combined length of context (1) after the run"]
    assert (truncation.dropped, truncation.first) == (2, first)


def test_leaderboard_log_holds_the_table_and_one_truncation_line(base_model, shared_data, tmp_path):
    """A 256-token model on 25-shot ARC: every request is cut; the log says so once, without bars or git noise
    (tmp_path is no git repository)."""
    out = tmp_path / "lb.json"
    args = [
        "leaderboard",
        base_model,
        "--tasks",
        "arc",
        "--limit",
        "3",
        "--data-dir",
        shared_data,
        "--out",
        out,
    ]
    status, text = run_to_log(args, tmp_path / "log.txt", tmp_path)
    assert status == 0, text[-3000:]
    assert "\r" not in text and "it/s]" not in text
    assert "not a git repository" not in text
    [line] = [line for line in text.splitlines() if "Combined length" in line]  # the one summary line
    report = json.loads(out.read_text())
    assert report["truncated_requests"] > 0 and report["truncation_example"].startswith(LM_EVAL_TRUNCATION)
    assert line == (
        f"{report['truncated_requests']} requests were longer than the model's context; the harness cut them "
        f"from the left (the first: {report['truncation_example']})"
    )


# ------------------------------------------------------------------------------------------ progress
def test_generate_writes_progress_lines_into_a_log(base_model, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"instruction": f"Add {i} and 2."}) + "\n" for i in range(3)))
    args = ["generate", base_model, "--prompts", prompts, "--template", "alpaca", "--max-new-tokens", "2"]
    args += ["--batch-size", "1", "--device", "cpu", "--output", tmp_path / "out.json"]
    status, text = run_to_log(args, tmp_path / "log.txt", tmp_path)
    assert status == 0, text[-3000:]
    assert [line for line in text.splitlines() if line.startswith("generate:")] == [
        "generate: 1/3 prompts",
        "generate: 2/3 prompts",
        "generate: 3/3 prompts",
    ]
    assert "\r" not in text and "it/s]" not in text


def test_progress_lines_every_twentieth_and_at_the_end():
    stream = io.StringIO()
    lines = ProgressLines(100, unit="prompt", desc="generate", stream=stream)
    for _ in range(100):
        lines.update(1)
    assert stream.getvalue().splitlines() == [f"generate: {n}/100 prompts" for n in range(5, 101, 5)]
    stream = io.StringIO()
    resumed = ProgressLines(43, initial=20, unit="prompt", desc="g", stream=stream)  # a line every 2
    for count in (8, 8, 0, 7):  # an empty batch prints nothing
        resumed.update(count)
    assert stream.getvalue().splitlines() == ["g: 28/43 prompts", "g: 36/43 prompts", "g: 43/43 prompts"]


def test_the_harness_request_bars_print_progress_lines_without_a_terminal(tmp_path):
    """lm-evaluation-harness's request loops (tens of minutes on a real model) say how far they are in a log, a
    line at a time; a bar the harness disables itself (ranks but the first) and every other bar stay silent."""
    code = (
        "import torch; from tqdm.auto import tqdm\n"
        "from symnoise.quiet import quiet_progress_bars_unless_terminal\n"
        "quiet_progress_bars_unless_terminal()\n"
        "bars = [tqdm(total=40, disable=False, desc='Running loglikelihood requests'),\n"
        "        tqdm(total=40, disable=True, desc='Running generate_until requests'),\n"
        "        tqdm(total=40, disable=False, desc='Loading weights')]\n"
        "for _ in range(40):\n"
        "    for bar in bars: bar.update(1)\n"
        "for bar in bars: bar.close()\n"
    )
    status, text = run_to_log([], tmp_path / "log.txt", tmp_path, python_args=("-c", code))
    assert status == 0
    assert "\r" not in text
    assert text.splitlines() == [f"Running loglikelihood requests: {n}/40 requests" for n in range(2, 41, 2)]


def test_every_tqdm_bar_is_silent_in_a_command_without_a_terminal(tmp_path):
    """lm-eval passes disable=False to its bars, and tqdm was imported (with torch) before the command could set
    TQDM_DISABLE: neither draws a bar once the command has started."""
    code = (
        "import io, sys; import torch; from tqdm.auto import tqdm\n"
        "from symnoise.quiet import quiet_progress_bars_unless_terminal\n"
        "quiet_progress_bars_unless_terminal()\n"
        "out = io.StringIO()\n"
        "assert list(tqdm(range(3), disable=False, file=out)) == [0, 1, 2]\n"
        "sys.stdout.write(repr(out.getvalue()))\n"
    )
    status, text = run_to_log([], tmp_path / "log.txt", tmp_path, python_args=("-c", code))
    assert (status, text) == (0, "''")
