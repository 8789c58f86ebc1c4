"""Peak memory and time of loading + tokenising a large instruction file, as `symnoise train` does it.

    python benchmarks/data_load.py make --out /tmp/symnoise-bench        # writes the two synthetic files
    python benchmarks/data_load.py run /tmp/symnoise-bench/alpaca_50mb.json
    python benchmarks/data_load.py run /tmp/symnoise-bench/synthetic_500k.jsonl

``make`` writes a ~50 MB Alpaca-format JSON array (125,743 rows, like the issue's file) and a 500,000-row JSON
Lines file of short rows, from a fixed seed, plus a 32,000-token byte-level BPE tokenizer trained on a sample of
them (the size of LLaMA-2's vocabulary; no download). ``run`` measures, in a fresh process: resident memory after
the imports and the tokenizer (the baseline), the peak while the file is read, checked and tokenised into the
cache, the wall and CPU time that took (rows/s, rows per CPU second: on a shared machine the second is the one to
compare), the tokenizer alone on 20,000 of the rows (through ``tokenizer(...)`` and through the direct call
symnoise makes: the ceiling of any loader), and the time of a second call that finds the cache. ``--api
examples`` uses `load_examples` + `tokenize_examples` instead, the path symnoise took before issue 12 (run it
with an older checkout on PYTHONPATH to compare). Nothing here is written inside the repository, and ``run``
removes the tokenised-data cache it fills.

    python benchmarks/data_load.py --smoke [--work-dir DIR]

makes small versions of both files (a few hundred rows, a 1,000-token tokenizer) in a temporary folder, runs
each the way ``run`` does (in this process, so the memory figures mean nothing), prints the same lines and
deletes the folder: seconds, what ``make test`` runs (tests/test_benchmarks.py).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

WORDS = (
    "the of and to in is for that with as on be by this are from or an it at not which can have "
    "model data train noise token answer question list write explain describe give three example number "
    "python function code sort value result because however first second finally important simple"
).split()


@dataclass(frozen=True)
class Sizes:
    """What ``make`` writes: the two files' names and rows, and the tokenizer's vocabulary."""

    alpaca_name: str
    alpaca_rows: int
    jsonl_name: str
    jsonl_rows: int
    vocab_size: int


FULL = Sizes("alpaca_50mb.json", 125_743, "synthetic_500k.jsonl", 500_000, 32_000)
SMOKE = Sizes("alpaca_smoke.json", 300, "synthetic_smoke.jsonl", 1_000, 1_000)
SMOKE_BANNER = (
    "SMOKE RUN (--smoke): small files, in one process; checks that the benchmark runs, figures mean nothing"
)


def sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


def make(out: Path, sizes: Sizes = FULL) -> list[Path]:
    """Write the two files and the tokenizer into ``out``; returns the two files' paths."""
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    rows = []
    for k in range(sizes.alpaca_rows):
        rows.append(
            {
                "instruction": sentence(rng, rng.randint(6, 20)),
                "input": sentence(rng, rng.randint(4, 30)) if k % 3 == 0 else "",
                "output": " ".join(sentence(rng, rng.randint(5, 15)) for _ in range(rng.randint(1, 7))),
            }
        )
    (out / sizes.alpaca_name).write_text(json.dumps(rows, indent=1), encoding="utf-8")
    with (out / sizes.jsonl_name).open("w", encoding="utf-8") as handle:
        for _ in range(sizes.jsonl_rows):
            handle.write(
                json.dumps(
                    {
                        "instruction": sentence(rng, rng.randint(3, 10)),
                        "output": sentence(rng, rng.randint(3, 12)),
                    }
                )
                + "\n"
            )
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=sizes.vocab_size,
        special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    sample = [row["instruction"] + " " + row["output"] for row in rows[:20_000]]
    tok.train_from_iterator(sample, trainer=trainer)
    PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    ).save_pretrained(out / "tokenizer")
    paths = [out / sizes.alpaca_name, out / sizes.jsonl_name]
    for path in paths:
        print(f"{path}: {path.stat().st_size / 1e6:.1f} MB")
    return paths


def rss_mb(field: str = "VmRSS") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def per_second(count: int, seconds: float) -> int | None:
    """``count / seconds`` rounded; None when the interval was too short to measure (CPU time is counted in
    clock ticks, so a tiny file can take 0 of them)."""
    return round(count / seconds) if seconds > 0 else None


def cpu_seconds() -> float:
    """CPU time of this process, all threads (the tokenizer encodes in parallel)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def tokenizer_alone(path: Path, tokenizer, rows: int = 20_000) -> dict[str, int]:
    """Rows per second (wall, and per CPU second) of the tokenizer alone on the first `rows` rows' prompt and
    response texts: through ``tokenizer(...)``, and through the direct Rust call symnoise makes when it can
    (`symnoise.data.tokenize.rust_backend`). The second is the ceiling of symnoise's loader with this tokenizer."""
    from itertools import islice

    from symnoise.data.formats import iter_records
    from symnoise.data.templates import alpaca_prompt
    from symnoise.data.tokenize import _token_ids

    _, records = iter_records(str(path), on_bad_row="skip")
    texts = [text for record in islice(records, rows) for text in (alpaca_prompt(record), record.output)]
    calls = {
        "tokenizer_call": lambda: tokenizer(texts, add_special_tokens=False, split_special_tokens=True),
        "symnoise_call": lambda: _token_ids(tokenizer, texts),
    }
    figures = {}
    for name, call in calls.items():
        start, cpu_start = time.perf_counter(), cpu_seconds()
        call()
        figures[f"{name}_rows_per_s"] = per_second(len(texts) // 2, time.perf_counter() - start)
        figures[f"{name}_rows_per_cpu_s"] = per_second(len(texts) // 2, cpu_seconds() - cpu_start)
    return figures


def run(path: Path, api: str, max_length: int) -> None:
    """Measure one file (see the module docstring) and print one JSON line; the cache it fills is removed."""
    with tempfile.TemporaryDirectory(prefix="symnoise-bench-cache-") as cache:
        os.environ["SYMNOISE_CACHE"] = cache
        print(json.dumps(measure(path, api, max_length)))


def measure(path: Path, api: str, max_length: int) -> dict:
    from transformers import AutoTokenizer

    from symnoise.data import load_examples, tokenize_examples

    tokenizer = AutoTokenizer.from_pretrained(path.parent / "tokenizer")
    tokenizer("warm up")
    baseline = rss_mb()
    start, cpu_start = time.perf_counter(), cpu_seconds()
    if api == "examples":
        examples, _ = load_examples(str(path), on_bad_row="skip")
        dataset = tokenize_examples(examples, tokenizer, "alpaca", max_length)
        rows = len(examples)
    else:
        from symnoise.data.prepare import DatasetSpec, prepare_dataset

        dataset, report = prepare_dataset(DatasetSpec(str(path), on_bad_row="skip"), tokenizer, max_length)
        rows = report.load.n_rows
    elapsed, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
    peak = rss_mb("VmHWM")
    line = {
        "file": path.name,
        "file_mb": round(path.stat().st_size / 1e6, 1),
        "api": api,
        "rows": rows,
        "examples": len(dataset),
        "tokens": int(sum(dataset.lengths)),
        "seconds": round(elapsed, 2),
        "rows_per_s": per_second(rows, elapsed),
        "cpu_seconds": round(cpu, 2),
        "rows_per_cpu_s": per_second(rows, cpu),
        "baseline_rss_mb": round(baseline),
        "peak_rss_mb": round(peak),
        "peak_over_baseline_mb": round(peak - baseline),
        "peak_over_baseline_x_file": round((peak - baseline) / (path.stat().st_size / 2**20), 2),
    }
    if api == "prepare":
        line.update(tokenizer_alone(path, tokenizer))
        start = time.perf_counter()
        again, cached = prepare_dataset(DatasetSpec(str(path), on_bad_row="skip"), tokenizer, max_length)
        line["cached_seconds"] = round(time.perf_counter() - start, 2)
        assert cached.cached and len(again) == len(dataset)
    return line


def smoke(work_dir: Path | None, max_length: int = 512) -> None:
    """``make`` with small sizes into a temporary folder, then ``run`` on each file (both APIs on the Alpaca
    one), in this process; the folder is deleted."""
    print(SMOKE_BANNER)
    if work_dir is not None:
        work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="symnoise-bench-", dir=work_dir) as folder:
        print(f"work dir: {folder} (deleted at the end)")
        alpaca, jsonl = make(Path(folder), SMOKE)
        for path, api in ((alpaca, "prepare"), (alpaca, "examples"), (jsonl, "prepare")):
            run(path, api, max_length)
    print(SMOKE_BANNER)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="make small files in a temporary folder and run them (seconds; what `make test` runs): checks "
        "that the benchmark still runs, its figures mean nothing",
    )
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="--smoke: where its temporary folder goes"
    )
    sub = parser.add_subparsers(dest="command")
    make_parser = sub.add_parser("make")
    make_parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "symnoise-bench")
    run_parser = sub.add_parser("run")
    run_parser.add_argument("path", type=Path)
    run_parser.add_argument("--api", choices=["prepare", "examples"], default="prepare")
    run_parser.add_argument("--max-length", type=int, default=512)
    args = parser.parse_args()
    if args.smoke:
        smoke(args.work_dir)
    elif args.command == "make":
        make(args.out)
    elif args.command == "run":
        run(args.path, args.api, args.max_length)
    else:
        parser.error("give a command (make, run) or --smoke")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
