"""The noise path alone: symnoise's embedding update against transformers' NEFTune hook, side by side.

A training step on a tiny model on a shared CPU is too noisy to resolve a 2% overhead (see noise_overhead.py);
this times just what the embedding hook adds, on the same (B, T, d) embeddings, interleaved over rounds, and
prints the median milliseconds and the ratio to transformers' hook. No model forward is involved.

Run: python benchmarks/noise_path.py [--batch 8 --seq 256 --hidden 256 --rounds 15 --threads 2]

``--smoke`` times the same variants on tiny embeddings for two rounds, in seconds (``make test`` runs it,
tests/test_benchmarks.py); its figures mean nothing. It calls symnoise's private noise path
(`symnoise.attach.NoiseHandle._add_noise` with a `symnoise.attach._Call`), so the smoke run is what notices
when that changes.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers.integrations.neftune import neftune_post_forward_hook

from symnoise import NoiseConfig
from symnoise.attach import NoiseHandle, _Call

# --smoke: the defaults it replaces (flags given on the command line still win).
SMOKE = dict(batch=2, seq=16, hidden=32, rounds=2, threads=1)
SMOKE_BANNER = (
    "SMOKE RUN (--smoke): tiny embeddings, two rounds; checks that the benchmark runs, figures mean nothing"
)


class _EmbeddingOnly(torch.nn.Module):
    def __init__(self, embedding: torch.nn.Embedding):
        super().__init__()
        self.embedding = embedding

    def get_input_embeddings(self) -> torch.nn.Embedding:
        return self.embedding

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.embedding(input_ids)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny embeddings for two rounds (seconds; what `make test` runs): checks that the benchmark "
        "still runs, its figures mean nothing",
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if args.smoke:
        parser.set_defaults(**SMOKE)
        args = parser.parse_args(argv)
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    if args.smoke:
        print(SMOKE_BANNER)
    embeds = torch.randn(args.batch, args.seq, args.hidden)
    mask = torch.ones(args.batch, args.seq, dtype=torch.long)
    mask[:, int(0.6 * args.seq) :] = 0
    embedding = torch.nn.Embedding(8, args.hidden).train()

    def transformers_hook() -> torch.Tensor:
        embedding.neftune_noise_alpha = 5.0
        return neftune_post_forward_hook(embedding, None, embeds)

    variants = {"transformers NEFTune hook": transformers_hook}
    for method in ("uniform", "gaussian", "bernoulli", "symnoise"):
        handle = NoiseHandle(
            _EmbeddingOnly(torch.nn.Embedding(8, args.hidden)), NoiseConfig(method, 5.0, seed=0)
        )
        doubled = 0 if method == "symnoise" else None
        call = _Call(
            active=True,
            input_shape=torch.Size([args.batch, args.seq]),
            attention_mask=mask,
            repeated_along=doubled,
        )
        source = torch.cat([embeds, embeds]) if doubled == 0 else embeds
        variants[f"symnoise {method}" + (" (2B rows)" if doubled == 0 else "")] = (
            lambda h=handle, c=call, x=source: h._add_noise(x, c)
        )
    times: dict[str, list[float]] = {name: [] for name in variants}
    for fn in variants.values():
        fn()
    for _ in range(args.rounds):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    reference = statistics.median(times["transformers NEFTune hook"])
    print(
        f"torch {torch.__version__}, threads {args.threads}, embeddings {tuple(embeds.shape)}, 60% real tokens"
    )
    print(f"{'variant':34s} {'median ms':>10s} {'x transformers':>15s}")
    for name, values in times.items():
        print(f"{name:34s} {statistics.median(values):10.2f} {statistics.median(values) / reference:15.2f}")
    if args.smoke:
        print(SMOKE_BANNER)


if __name__ == "__main__":
    main()
