"""Prompts/s of `symnoise.generation` (sorted, left-padded batches) against a plain per-prompt generate loop.

Same model, same prompts, same decoding (greedy, repetition penalty 1.2, the same per-prompt token budget);
the script also checks that both give the same outputs. The model is a randomly initialised Llama of real
shape (default 4 layers, d=256) on the quickstart tokenizer, so it runs on a CPU without any download.

    python benchmarks/generate_throughput.py --prompts 64 --batch-size 16 --max-new-tokens 64 --threads 1
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import transformers

from symnoise import generation, synthetic
from symnoise.generation import DecodingSettings, Prompt


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


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
            model, tokenizer, prompts, "alpaca", settings, Path(folder) / "bench.partial.jsonl", "bench",
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
                input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                max_new_tokens=settings.budget(len(ids)), repetition_penalty=settings.repetition_penalty,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
            )
        outputs.append(generation.decode_output(tokenizer, out[0, len(ids):].tolist()))
    return outputs, time.perf_counter() - start


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer, model, prompts = build(args)
    settings = DecodingSettings(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    loop(model, tokenizer, prompts[:2], settings)  # warm-up
    batched_outputs, batched_s = batched(model, tokenizer, prompts, settings)
    loop_outputs, loop_s = loop(model, tokenizer, prompts, settings)
    same = sum(a == b for a, b in zip(batched_outputs, loop_outputs, strict=True))
    n = len(prompts)
    print(f"model: Llama {args.layers} layers, d={args.hidden}, vocab {len(tokenizer)}; {n} prompts, "
          f"max_new_tokens {args.max_new_tokens}, torch threads {torch.get_num_threads()}")
    print(f"per-prompt model.generate loop: {n / loop_s:7.2f} prompts/s ({loop_s:.1f} s)")
    print(f"batched (batch size {args.batch_size}):       {n / batched_s:7.2f} prompts/s ({batched_s:.1f} s)")
    print(f"speed-up: {loop_s / batched_s:.2f}x; identical outputs: {same}/{n}")


if __name__ == "__main__":
    main()
