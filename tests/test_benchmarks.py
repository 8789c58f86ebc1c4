"""Every script in benchmarks/ runs in its --smoke mode and prints the tables of a real run.

Nothing else runs the benchmarks, so without these an API change inside symnoise breaks them unnoticed until
the next (GPU) run. Each test runs the script as a subprocess from the repository root, the way the README
says to, and checks real content: the table header, the baseline and the ratio of every compared variant (as
numbers), and that no checkpoint or model is left on disk.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # multi-process, subprocess or whole-pipeline tests: `make test` only

REPO_ROOT = Path(__file__).resolve().parents[1]
FLOAT = r"[-+]?\d+\.\d+"


def run_smoke(script: str, *extra: str) -> str:
    """Run ``benchmarks/<script> --smoke`` on one thread; returns stdout, after checking that it exited
    cleanly and said it was a smoke run."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, f"benchmarks/{script}", "--smoke", *extra],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"{script} --smoke failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    assert "SMOKE RUN" in done.stdout
    return done.stdout


def table_row(output: str, name: str) -> str:
    """The one line of ``output`` that starts with the variant ``name`` and the padding of its column (two
    spaces or more, so that "recipe symnoise rows" is not "recipe symnoise rows paired")."""
    lines = [line for line in output.splitlines() if re.match(rf"{re.escape(name)}\s\s", line)]
    assert len(lines) == 1, f"expected one row for {name!r}, got {lines}\n{output}"
    return lines[0]


def floats(line: str) -> list[float]:
    return [float(value) for value in re.findall(FLOAT, line)]


def assert_nothing_kept(folder: Path) -> None:
    """No checkpoint and no model weights anywhere under ``folder`` (the benchmark's work dir)."""
    kept = [*folder.rglob("checkpoint-*"), *folder.rglob("*.safetensors")]
    assert not kept, f"the benchmark left checkpoints or models behind: {kept}"


def work_dir_of(output: str) -> Path:
    match = re.search(r"^work dir: (\S+)", output, flags=re.MULTILINE)
    assert match, output
    return Path(match.group(1))


def test_noise_overhead_smoke():
    out = run_smoke("noise_overhead.py")
    timing = out.split("\nPeak activation memory", 1)[0]
    assert re.search(r"^variant\s+vs\s+median\s+base\s+ratio\s+r\.med\s+r\.min\s+r\.max\s+target", out, re.M)
    for name, baseline in (
        ("uniform", "none@B"),
        ("gaussian", "none@B"),
        ("bernoulli", "none@B"),
        ("hf_neftune", "none@B"),
        ("symnoise_concat", "none@2B"),
        ("symnoise_paired", "none@2B"),
    ):
        row = table_row(timing, name)
        assert row.split()[1] == baseline
        median, base, ratio, r_med, r_min, r_max = floats(row)[:6]
        assert median > 0 and base > 0 and ratio > 0
        assert r_min <= r_med <= r_max
    doubling = re.search(rf"cost of doubling the batch\): ({FLOAT})", out)
    assert doubling and float(doubling.group(1)) > 0
    memory = re.search(rf"paired / concat \(saved_peak\): ({FLOAT})\s+target <= 0\.60\s+(PASS|MISS)", out)
    assert memory, out
    assert 0 < float(memory.group(1)) < 1  # paired keeps less for backward than concat, at any size


def test_noise_path_smoke():
    out = run_smoke("noise_path.py")
    assert re.search(r"^variant\s+median ms\s+x transformers$", out, re.M)
    assert floats(table_row(out, "transformers NEFTune hook"))[-1] == 1.0
    for method in ("uniform", "gaussian", "bernoulli"):
        median_ms, ratio = floats(table_row(out, f"symnoise {method}"))
        assert median_ms > 0 and ratio > 0
    median_ms, ratio = floats(table_row(out, "symnoise symnoise (2B rows)"))
    assert median_ms > 0 and ratio > 0


def test_train_throughput_smoke(tmp_path):
    out = run_smoke("train_throughput.py", "--work-dir", str(tmp_path))
    work = work_dir_of(out)
    assert work.parent == tmp_path and not work.exists()
    assert_nothing_kept(tmp_path)
    held = re.search(
        rf"^no run wrote a checkpoint or a model \(training\.save_model: false; the baselines save_strategy "
        rf"'no'\); a run directory held at most ({FLOAT}) KiB \(config, metrics\)",
        out,
        re.M,
    )
    assert held and float(held.group(1)) > 0  # the runs wrote their config and metrics, then deleted them
    total = re.search(r"every run consumed the same (\d+) real tokens", out)
    assert total
    # Equal work: each run's own count (its progress line) is the same, the baselines' included; every run but
    # TRL's took the 2 optimizer steps of --smoke (1 at twice the batch); TRL's packed rows are shaped so that its
    # epoch takes 2 as well (always possible at this size).
    runs = re.findall(
        rf"^  repeat 1/1 (.+?)\s+{FLOAT} s\s+\d+ real tok/s\s+(\d+) real tokens\s+(\d+) steps", out, re.M
    )
    assert len(runs) == 16, runs
    assert {tokens for _, tokens, _ in runs} == {total.group(1)}
    assert {name: int(steps) for name, _, steps in runs if "2x batch" in name} == {
        "recipe none rows 2x batch": 1,
        "recipe none padding_free 2x batch": 1,
    }
    assert {int(steps) for name, _, steps in runs if "2x batch" not in name} == {2}
    packed = r"4 examples packed \(bfd\) into \d+ rows of at most 128 tokens; rows per micro-batch {}, "
    packed += r"micro-batches per step \d+: 2 optimizer steps for the epoch"
    matched, one_row = packed.format(r"\d+"), packed.format(1)
    assert re.search(
        r"^optimizer steps: 2 per run \(1 at twice the batch\); "
        rf"trl sft\+neftune packing: {matched}; trl sft\+neftune packing 1 row: {one_row}$",
        out,
        re.M,
    ), out
    assert re.search(r"^padding-free baselines: the model keeps packed sequences apart under sdpa", out, re.M)

    assert re.search(r"^variant\s+real tok/s\s+padding\s+x baseline\s+target\s+verdict$", out, re.M)
    throughput = out.split("\nThroughput", 1)[1].split("\n\n", 1)[0]
    baseline = table_row(throughput, "trainer+neftune padded random")
    assert baseline.endswith("%") and "PASS" not in baseline and "MISS" not in baseline  # no ratio to itself
    baselines = [
        "trainer+neftune group_by_length",
        "trainer+neftune flattening",
        "trl sft+neftune packing",
        "trl sft+neftune packing 1 row",
    ]
    for name in baselines:  # a ratio to the padded baseline, but no target: they are references
        row = table_row(throughput, name)
        ratio = re.search(rf"%\s+({FLOAT}) \[({FLOAT})\.\.({FLOAT})\]$", row)
        assert ratio and float(ratio.group(1)) > 0, row
    for name in baselines[1:]:  # padding-free: no padding at all
        assert re.search(rf"\]\s+0\.0%\s+{FLOAT} \[", table_row(throughput, name))
    variants = [
        "recipe neftune rows",
        "recipe neftune padding_free",
        "recipe neftune group_by_length",
        "recipe symnoise rows",
        "recipe symnoise padding_free",
        "recipe symnoise group_by_length",
        "recipe neftune rows+grouped",
        "recipe symnoise rows+grouped",
        "recipe symnoise rows paired",
        "recipe none rows 2x batch",
        "recipe none padding_free 2x batch",
    ]
    for name in variants:
        row = table_row(throughput, name)
        ratio = re.search(rf"%\s+({FLOAT}) \[({FLOAT})\.\.({FLOAT})\]", row)
        assert ratio, row
        assert float(ratio.group(1)) > 0
        if "2x batch" not in name:
            assert re.search(r"\s(PASS|MISS)$", row), row

    doubled = out.split("\nSymNoise against no noise at twice the batch", 1)[1].split("\n\n", 1)[0]
    for packing in ("rows", "padding_free"):
        row = table_row(doubled, f"recipe symnoise {packing}")
        assert f"vs recipe none {packing} 2x batch" in row
        assert floats(row)[0] > 0 and re.search(r"\s(PASS|MISS)$", row)

    losses = out.split("\nLoss after the run", 1)[1].split("\n\n", 1)[0]
    assert re.search(r"^variant\s+eval loss\s+train loss\s+delta eval\s+noise\s+verdict$", losses, re.M)
    for name in baselines + variants:
        row = table_row(losses, name)
        assert re.search(rf"\s[-+]{FLOAT}\s+{FLOAT}\s+(agree|DIFFER)$", row), row

    best = out.split("\nsymnoise's best NEFTune variant against the best baseline", 1)[1]
    base = re.search(rf"^best baseline: (.+) ({FLOAT}|\d+) \[", best, re.M)
    ours = re.search(rf"^best symnoise NEFTune variant: (.+) ({FLOAT}|\d+) \[", best, re.M)
    assert base and base.group(1) in ["trainer+neftune padded random", *baselines], best
    assert ours and ours.group(1) in [name for name in variants if name.startswith("recipe neftune")], best
    ratio = re.search(
        rf"^ratio: ({FLOAT}) \[({FLOAT})\.\.({FLOAT})\]  target 1\.30  (PASS|MISS)$", best, re.M
    )
    assert ratio and float(ratio.group(1)) > 0, best

    # The best of each side by median real tok/s (the throughput table's first figure), and their ratio.
    def median_tps(name: str) -> int:
        return int(re.match(rf"{re.escape(name)}\s+(\d+) \[", table_row(throughput, name)).group(1))

    theirs = {name: median_tps(name) for name in ["trainer+neftune padded random", *baselines]}
    mine = {name: median_tps(name) for name in variants if name.startswith("recipe neftune")}
    assert int(base.group(2)) == theirs[base.group(1)] == max(theirs.values())  # (a tie may name either)
    assert int(ours.group(2)) == mine[ours.group(1)] == max(mine.values())
    assert float(ratio.group(1)) == pytest.approx(mine[ours.group(1)] / theirs[base.group(1)], rel=1e-2)
    assert re.search(rf"^eval loss against it: delta [-+]{FLOAT}, noise {FLOAT}  (agree|DIFFER)$", best, re.M)


def test_packed_batch_shape_gives_the_others_optimizer_steps_where_whole_rows_allow():
    """TRL's batches are whole packed rows: (rows per micro-batch, micro-batches per step, steps of the epoch).
    Asked in a subprocess, since importing the script sets environment variables (HF_HUB_OFFLINE, ...)."""
    cases = [(95, 12, 8 * 95 / 192), (95, 12, 1), (3, 2, 1.5), (77, 12, 3.2), (77, 12, 7)]
    code = (
        "import json, sys; sys.path.insert(0, 'benchmarks'); from train_throughput import packed_batch_shape; "
        f"print(json.dumps([packed_batch_shape(*case) for case in {cases!r}]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[-1]) == [
        [4, 2, 12],  # the default CPU run: 192 examples packed into 95 rows, about 4 rows per 8 examples
        [1, 8, 12],
        [1, 2, 2],  # --smoke
        # 77 rows cannot make 12 steps (ceil(77 / 7) = 11, ceil(77 / 6) = 13, and no remainder helps): the
        # nearest count, then the micro-batch nearest the wanted rows, then the fewer steps.
        [3, 2, 13],
        [7, 1, 11],
    ]


def test_generate_throughput_smoke():
    out = run_smoke("generate_throughput.py")
    loop = re.search(rf"^per-prompt model\.generate loop: ({FLOAT}) \[", out, re.M)
    batched = re.search(rf"^batched \(batch size 2\):\s+({FLOAT}) \[", out, re.M)
    assert loop and batched, out
    assert float(loop.group(1)) > 0 and float(batched.group(1)) > 0
    speed_up = re.search(
        rf"^speed-up \(median of per-round ratios\): ({FLOAT}) \[.*target 4x\s+(PASS|MISS)$", out, re.M
    )
    assert speed_up and float(speed_up.group(1)) > 0
    identical = re.search(r"^identical outputs: (\d+)/(\d+)", out, re.M)
    assert identical and int(identical.group(2)) == 4


def test_data_load_smoke(tmp_path):
    out = run_smoke("data_load.py", "--work-dir", str(tmp_path))
    assert not work_dir_of(out).exists()
    assert list(tmp_path.iterdir()) == []  # the files, the tokenizer and the tokenised-data cache are gone
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [(line["file"], line["api"]) for line in lines] == [
        ("alpaca_smoke.json", "prepare"),
        ("alpaca_smoke.json", "examples"),
        ("synthetic_smoke.jsonl", "prepare"),
    ]
    for line in lines:
        assert line["rows"] == line["examples"] > 0 and line["tokens"] > line["rows"]
        assert isinstance(line["peak_over_baseline_x_file"], float | int)
        assert line["rows_per_s"] is None or line["rows_per_s"] > 0
    for line in (lines[0], lines[2]):
        assert line["cached_seconds"] >= 0
        assert line["symnoise_call_rows_per_s"] is None or line["symnoise_call_rows_per_s"] > 0


@pytest.mark.parametrize("flash_attn", [False, True])
def test_the_gpu_session_asks_the_throughput_benchmark_for_what_it_has(tmp_path, flash_attn):
    """benchmarks/gpu_session.sh, the one device command of a GPU session, hands train_throughput.py arguments
    it accepts and variant names it knows: FlashAttention with padding_free where flash-attn imports (faked here by
    an empty module), SDPA with rows elsewhere. A renamed variant fails here, not on the lent GPU."""
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    try:
        import train_throughput
    finally:
        sys.path.remove(str(REPO_ROOT / "benchmarks"))
    fake = tmp_path / "site"
    if flash_attn:
        (fake / "flash_attn").mkdir(parents=True)
        (fake / "flash_attn" / "__init__.py").write_text("")
    env = {
        **os.environ,
        "GPU_SESSION_PRINT_ARGS": "1",
        "GPU_SESSION_DEVICE": "cpu",
        "GPU_SESSION_MODEL": "tiny",
        "PYTHON": sys.executable,
        "PYTHONPATH": os.pathsep.join([str(fake), str(REPO_ROOT / "src")]),
    }
    done = subprocess.run(
        ["bash", "benchmarks/gpu_session.sh"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    args = train_throughput.parse_args(done.stdout.splitlines())
    layout = "padding_free" if flash_attn else "rows"
    assert (args.attn == "flash_attention_2") == flash_attn
    assert args.device == "cpu" and args.model == "tiny" and args.repeats == 1 and args.steps == 8
    names = [v.name for v in train_throughput.selected_variants(args.variants)]
    assert names[0] == train_throughput.BASELINE
    for wanted in (f"recipe neftune {layout}", f"recipe symnoise {layout}", f"recipe none {layout} 2x batch"):
        assert wanted in names
    assert {"trainer+neftune group_by_length", "trainer+neftune flattening"} <= set(names)
