"""Prompts/s of `symnoise.generation` (sorted, left-padded batches) against a plain per-prompt generate loop.

Same model, same prompts, same decoding (greedy, repetition penalty 1.2, the same per-prompt token budget);
the script also checks that both give the same outputs. The model is a randomly initialised Llama of real
shape (default 4 layers, d=256) on the quickstart tokenizer, so it runs on a CPU without any download.

Timing, made for a shared machine: an untimed warm-up of both paths, then ``--repeats`` rounds; in each round
the batched path and the loop run once each, in an order drawn from ``--seed``, so both see similar load. The
summary gives the median prompts/s of each path with min..max over the rounds, the median and min..max of the
per-round speed-ups (loop seconds / batched seconds, judged against the 4x target), the number of identical
outputs, and the load averages (1, 5, 15 minutes, as `uptime` prints them) before, during and after.

    python benchmarks/generate_throughput.py --prompts 64 --batch-size 16 --max-new-tokens 64 --repeats 3 --threads 1

``--smoke`` runs both paths, the comparison and the summary on a tiny model with a few prompts and tokens, in
seconds (``make test`` runs it, tests/test_benchmarks.py); its figures and verdict mean nothing.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
import transformers

from symnoise import generation, synthetic
from symnoise.generation import DecodingSettings, Prompt

TARGET = 4.0  # batched prompts/s over the per-prompt loop's
# --smoke: the defaults it replaces (flags given on the command line still win).
SMOKE = dict(prompts=4, batch_size=2, max_new_tokens=4, layers=2, hidden=32, repeats=1, threads=1)
SMOKE_BANNER = (
    "SMOKE RUN (--smoke): tiny model, a few prompts; checks that the benchmark runs, figures mean nothing"
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a tiny model, a few prompts and tokens (seconds; what `make test` runs): checks that the "
        "benchmark still runs, its figures mean nothing",
    )
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds after the warm-up")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: on a shared machine more threads wait at every parallel barrier)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.smoke:
        parser.set_defaults(**SMOKE)
        args = parser.parse_args(argv)
    return args


def build(args: argparse.Namespace):
    """Tokenizer, model and prompts (held-out quickstart examples, which vary in length)."""
    train, evaluation = synthetic.make_task_examples(1000, max(args.prompts, 11), seed=args.seed)
    tokenizer = synthetic.train_tokenizer(synthetic.tokenizer_corpus(train), vocab_size=1024)
    torch.manual_seed(args.seed)
    config = synthetic.tiny_llama_config(len(tokenizer), hidden_size=args.hidden, layers=args.layers, heads=4)
    model = transformers.LlamaForCausalLM(config).eval()
    prompts = [Prompt(e.instruction, e.source, e.input) for e in evaluation[: args.prompts]]
    return tokenizer, model, prompts


def batched(model, tokenizer, prompts, settings: DecodingSettings) -> tuple[list[str], float]:
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        outputs, _ = generation.generate_outputs(
            model,
            tokenizer,
            prompts,
            "alpaca",
            settings,
            Path(folder) / "bench.partial.jsonl",
            "bench",
            progress=False,
        )
        return outputs, time.perf_counter() - start


def loop(model, tokenizer, prompts, settings: DecodingSettings) -> tuple[list[str], float]:
    outputs = []
    start = time.perf_counter()
    for ids in generation.prompt_token_ids(tokenizer, prompts, "alpaca"):
        input_ids = torch.tensor([ids])
        with torch.inference_mode():
            out = model.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                do_sample=False,
                max_new_tokens=settings.budget(len(ids)),
                repetition_penalty=settings.repetition_penalty,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        outputs.append(generation.decode_output(tokenizer, out[0, len(ids) :].tolist()))
    return outputs, time.perf_counter() - start


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as `uptime` prints them."""
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def span(values: list[float], digits: int = 2) -> str:
    return f"{statistics.median(values):.{digits}f} [{min(values):.{digits}f}..{max(values):.{digits}f}]"


def main() -> None:
    args = parse_args()
    if args.repeats < 1:
        raise SystemExit("--repeats must be >= 1")
    torch.set_num_threads(args.threads)
    if args.smoke:
        print(SMOKE_BANNER)
    print(
        f"machine: {os.cpu_count()} CPUs ({cpu_name()}); torch {torch.__version__}, transformers "
        f"{transformers.__version__}, torch threads {torch.get_num_threads()}"
    )
    print(f"load average before: {load_average()}", flush=True)
    tokenizer, model, prompts = build(args)
    settings = DecodingSettings(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    n = len(prompts)
    print(
        f"model: Llama {args.layers} layers, d={args.hidden}, vocab {len(tokenizer)}; {n} prompts, "
        f"max_new_tokens {args.max_new_tokens}, batch size {args.batch_size}, {args.repeats} rounds",
        flush=True,
    )

    loop(model, tokenizer, prompts[:2], settings)  # warm-up, untimed
    batched(model, tokenizer, prompts[: args.batch_size], settings)

    paths = {"batched": batched, "loop": loop}
    rng = random.Random(args.seed)
    seconds: dict[str, list[float]] = {name: [] for name in paths}
    identical: list[int] = []
    for round_number in range(1, args.repeats + 1):
        order = rng.sample(sorted(paths), k=len(paths))
        outputs = {}
        for name in order:
            outputs[name], elapsed = paths[name](model, tokenizer, prompts, settings)
            seconds[name].append(elapsed)
        identical.append(sum(a == b for a, b in zip(outputs["batched"], outputs["loop"], strict=True)))
        print(
            f"round {round_number} ({' then '.join(order)}): batched {seconds['batched'][-1]:6.1f} s, "
            f"loop {seconds['loop'][-1]:6.1f} s, speed-up {seconds['loop'][-1] / seconds['batched'][-1]:.2f}x, "
            f"load {load_average()}",
            flush=True,
        )

    ratios = [lo / ba for lo, ba in zip(seconds["loop"], seconds["batched"], strict=True)]
    verdict = "PASS" if statistics.median(ratios) >= TARGET else "MISS"
    print(f"per-prompt model.generate loop: {span([n / s for s in seconds['loop']])} prompts/s")
    print(
        f"batched (batch size {args.batch_size}):       {span([n / s for s in seconds['batched']])} prompts/s"
    )
    print(f"speed-up (median of per-round ratios): {span(ratios)}x  target {TARGET:.0f}x  {verdict}")
    print(
        f"identical outputs: {min(identical)}/{n}"
        + ("" if len(set(identical)) == 1 else f" (per round {identical})")
    )
    print(f"load average after: {load_average()}")
    if args.smoke:
        print(SMOKE_BANNER)


if __name__ == "__main__":
    main()
