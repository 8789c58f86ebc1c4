"""Training-step overhead of symnoise's noise methods, and peak activation memory of paired vs concat SymNoise.

One run prints, on a randomly initialised Llama built from a ``LlamaConfig`` (no download):

1. step time of ``uniform``, ``gaussian``, ``bernoulli`` divided by no noise at the same batch B;
2. step time of SymNoise ``concat`` (which runs ``X + eps`` and ``X - eps`` as one batch of 2B) divided by no
   noise at batch 2B (the same B sequences twice), the fair comparison since SymNoise does twice the work;
3. peak activation memory of SymNoise ``paired`` vs ``concat``, counted as the bytes of the tensors autograd saves
   for backward (and on CUDA also ``torch.cuda.max_memory_allocated``);
4. transformers' own NEFTune hook, measured the same way as the symnoise methods.

A step is ``zero_grad(set_to_none=True)`` + forward with labels + backward, with no optimizer (an optimizer step
costs the same for every variant, so leaving it out makes the noise's share easier to see). After a warm-up,
each round runs every comparison once, in a fresh random order, as a back-to-back (baseline, variant) pair; the
table gives the ratio of medians and the median/min/max of the per-pair ratios, so the noise of a shared machine
stays visible.

    python benchmarks/noise_overhead.py --layers 4 --hidden 256 --batch 8 --seq 256 --rounds 7 --threads 2

``--smoke`` runs the same comparisons and tables on a tiny model for two rounds, in seconds (``make test``
runs it, tests/test_benchmarks.py); its figures and verdicts mean nothing.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import transformers
from transformers.integrations.neftune import neftune_post_forward_hook

import symnoise

ALPHA = 5.0
ADDITIVE_TARGET = 1.02  # additive methods within 2% of no noise at B
CONCAT_TARGET = 1.03  # SymNoise concat within 3% of no noise at 2B
PAIRED_MEMORY_TARGET = 0.60  # paired peak activation memory at most 60% of concat
SMOKE_BANNER = (
    "SMOKE RUN (--smoke): tiny model, two rounds; checks that the benchmark runs, figures mean nothing"
)
# --smoke: the defaults it replaces (flags given on the command line still win).
SMOKE = dict(
    layers=2,
    hidden=32,
    heads=2,
    intermediate=64,
    vocab=128,
    batch=2,
    seq=16,
    min_len=4,
    rounds=2,
    warmup=1,
    device="cpu",
    threads=1,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a tiny model for two rounds (seconds; what `make test` runs): checks that the benchmark still "
        "runs, its figures mean nothing",
    )
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--intermediate", type=int, default=688)
    parser.add_argument("--vocab", type=int, default=32000, help="Llama's own vocabulary size by default")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--min-len", type=int, default=64, help="real lengths are uniform in [min-len, seq]")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant before the rounds")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (CPU)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.smoke:
        parser.set_defaults(**SMOKE)
        args = parser.parse_args(argv)
    return args


# ---------------------------------------------------------------------------------------------- setup
def build_model(args: argparse.Namespace) -> transformers.PreTrainedModel:
    """A Llama of the requested shape, randomly initialised, in training mode (attention dropout is 0)."""
    config = transformers.LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        max_position_embeddings=max(args.seq, 256),
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(args.seed)
    model = transformers.LlamaForCausalLM(config).to(device=args.device, dtype=getattr(torch, args.dtype))
    return model.train()


def make_batch(args: argparse.Namespace) -> dict[str, torch.Tensor]:
    """Random token ids, right-padded: each row's real length is uniform in [min_len, seq]; labels are -100
    on padding, as a collator would make them."""
    gen = torch.Generator().manual_seed(args.seed + 1)
    lengths = torch.randint(args.min_len, args.seq + 1, (args.batch,), generator=gen)
    mask = (torch.arange(args.seq).unsqueeze(0) < lengths.unsqueeze(1)).long()
    ids = torch.randint(3, args.vocab, (args.batch, args.seq), generator=gen) * mask
    labels = ids.masked_fill(mask == 0, -100)
    return {
        k: v.to(args.device) for k, v in {"input_ids": ids, "attention_mask": mask, "labels": labels}.items()
    }


def doubled(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same sequences twice: exactly the work of a SymNoise concat forward, without the noise."""
    return {k: torch.cat([v, v]) for k, v in batch.items()}


# ---------------------------------------------------------------------------------------------- variants
@dataclass
class Variant:
    """One way of running a training step: a name, how to attach the noise, and how many passes it runs."""

    name: str
    batch: dict[str, torch.Tensor]
    config: symnoise.NoiseConfig | None = None
    hf_neftune: bool = False

    def step(self, model: torch.nn.Module) -> None:
        """zero_grad + forward + backward, with the noise attached only for the duration of the call."""
        detach = self._attach(model)
        try:
            model.zero_grad(set_to_none=True)
            if self.config is not None and self.config.execution == "paired" and self.config.symmetric:
                handle = symnoise.get_handle(model)
                for weight in handle.paired_passes():
                    (model(**self.batch).loss * weight).backward()
            else:
                model(**self.batch).loss.backward()
        finally:
            detach()

    def _attach(self, model: torch.nn.Module) -> Callable[[], None]:
        if self.config is not None:
            return symnoise.attach(model, self.config).remove
        if self.hf_neftune:
            embeddings = model.get_input_embeddings()
            embeddings.neftune_noise_alpha = ALPHA
            hook = embeddings.register_forward_hook(neftune_post_forward_hook)

            def detach() -> None:
                hook.remove()
                del embeddings.neftune_noise_alpha

            return detach
        return lambda: None


def make_variants(batch: dict[str, torch.Tensor]) -> dict[str, Variant]:
    twice = doubled(batch)
    cfg = symnoise.NoiseConfig
    variants = [
        Variant("none@B", batch),
        Variant("uniform", batch, cfg("uniform", alpha=ALPHA)),
        Variant("gaussian", batch, cfg("gaussian", alpha=ALPHA)),
        Variant("bernoulli", batch, cfg("bernoulli", alpha=ALPHA)),
        Variant("hf_neftune", batch, hf_neftune=True),
        Variant("none@2B", twice),
        Variant("symnoise_concat", batch, cfg("symnoise", alpha=ALPHA, execution="concat")),
        Variant("symnoise_paired", batch, cfg("symnoise", alpha=ALPHA, execution="paired")),
    ]
    return {v.name: v for v in variants}


# ---------------------------------------------------------------------------------------------- timing
def timed_step(variant: Variant, model: torch.nn.Module, device: str) -> float:
    """Seconds of one step; on CUDA measured with events after a synchronize so queued work is included.
    Attaching and detaching the noise happens inside but costs microseconds (three hook registrations)."""
    if device == "cuda":
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        variant.step(model)
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1000.0
    start_s = time.perf_counter()
    variant.step(model)
    return time.perf_counter() - start_s


COMPARISONS = (  # (variant, baseline it is divided by, target ratio or None)
    ("uniform", "none@B", ADDITIVE_TARGET),
    ("gaussian", "none@B", ADDITIVE_TARGET),
    ("bernoulli", "none@B", ADDITIVE_TARGET),
    ("hf_neftune", "none@B", ADDITIVE_TARGET),
    ("symnoise_concat", "none@2B", CONCAT_TARGET),
    ("symnoise_paired", "none@2B", None),
)


def run_rounds(
    variants: dict[str, Variant], model: torch.nn.Module, args: argparse.Namespace
) -> dict[str, list[tuple[float, float]]]:
    """Warm-up, then ``rounds`` rounds. In each round every comparison runs once, in a fresh shuffled order, as
    a back-to-back pair (baseline and variant, which one first is drawn at random), so both steps of a pair see
    the same load on a shared machine. Returns ``(variant seconds, baseline seconds)`` per round."""
    for variant in variants.values():
        for _ in range(args.warmup):
            variant.step(model)
    rng = random.Random(args.seed)
    order = list(COMPARISONS)
    pairs: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in COMPARISONS}
    for r in range(args.rounds):
        rng.shuffle(order)
        for name, baseline, _ in order:
            if rng.random() < 0.5:
                base_s = timed_step(variants[baseline], model, args.device)
                var_s = timed_step(variants[name], model, args.device)
            else:
                var_s = timed_step(variants[name], model, args.device)
                base_s = timed_step(variants[baseline], model, args.device)
            pairs[name].append((var_s, base_s))
        print(
            f"  round {r + 1}/{args.rounds} (variant/baseline s): "
            + "  ".join(f"{n} {pairs[n][-1][0]:.2f}/{pairs[n][-1][1]:.2f}" for n in pairs),
            flush=True,
        )
    return pairs


# ---------------------------------------------------------------------------------------------- memory
class SavedTensorMeter:
    """Live and peak bytes of the tensors autograd saves for backward, i.e. the activation memory of a step.

    Every tensor saved during the forward goes through the pack hook; its storage is counted once (several saved
    tensors often share one storage: views, the same tensor saved by two ops) until the last packed reference to
    it is released, which autograd does when backward frees the graph. Parameters saved by linear layers are not
    activations and are left out. What this cannot see: the outputs (logits) that the caller holds, gradients,
    and temporaries that live only inside one op; those are the same for paired and concat per pass, or smaller.
    """

    def __init__(self, model: torch.nn.Module):
        self.params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.refs: dict[int, int] = {}
        self.live = 0
        self.peak = 0

    def _pack(self, tensor: torch.Tensor) -> object:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key in self.params or storage.nbytes() == 0:
            return tensor
        if key not in self.refs:
            self.live += storage.nbytes()
            self.peak = max(self.peak, self.live)
        self.refs[key] = self.refs.get(key, 0) + 1
        return _Ticket(self, key, storage.nbytes(), tensor)

    @staticmethod
    def _unpack(packed: object) -> torch.Tensor:
        return packed.tensor if isinstance(packed, _Ticket) else packed

    def release(self, key: int, nbytes: int) -> None:
        self.refs[key] -= 1
        if self.refs[key] == 0:
            del self.refs[key]
            self.live -= nbytes

    def hooks(self) -> torch.autograd.graph.saved_tensors_hooks:
        return torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)


class _Ticket:
    """What autograd keeps in place of a saved tensor while the meter is on; tells the meter when it is freed."""

    __slots__ = ("meter", "key", "nbytes", "tensor")

    def __init__(self, meter: SavedTensorMeter, key: int, nbytes: int, tensor: torch.Tensor):
        self.meter, self.key, self.nbytes, self.tensor = meter, key, nbytes, tensor

    def __del__(self) -> None:
        self.meter.release(self.key, self.nbytes)


def measure_memory(variant: Variant, model: torch.nn.Module, device: str) -> dict[str, int]:
    """Peak saved-for-backward bytes of one step and, on CUDA, the peak allocated above what was allocated
    before the step (parameters and inputs excluded)."""
    meter = SavedTensorMeter(model)
    result = {}
    if device == "cuda":
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    with meter.hooks():
        variant.step(model)
    if device == "cuda":
        torch.cuda.synchronize()
        result["cuda_peak"] = torch.cuda.max_memory_allocated() - base
    result["saved_peak"] = meter.peak
    if meter.live != 0:
        raise RuntimeError(f"saved-tensor accounting leaked {meter.live} bytes; the figures would be wrong")
    return result


# ---------------------------------------------------------------------------------------------- report
def ratio_row(name: str, baseline: str, pairs: list[tuple[float, float]], target: float | None) -> str:
    """Medians, ratio of medians, median/min/max of the per-round (back-to-back) ratios, and PASS/MISS of the
    ratio of medians against ``target`` (None: no target)."""
    med = statistics.median(v for v, _ in pairs)
    base = statistics.median(b for _, b in pairs)
    per_round = [v / b for v, b in pairs]
    verdict = "" if target is None else ("PASS" if med / base <= target else "MISS")
    goal = "" if target is None else f"<= {target:.2f}"
    return (
        f"{name:<16} {baseline:<8} {med:7.3f} {base:7.3f} {med / base:7.3f} {statistics.median(per_round):7.3f} "
        f"{min(per_round):7.3f} {max(per_round):7.3f}  {goal:<8} {verdict}"
    )


def main() -> None:
    args = parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch.cuda.is_available() is False")
    torch.set_num_threads(args.threads)
    if args.smoke:
        print(SMOKE_BANNER)
    model = build_model(args)
    batch = make_batch(args)
    variants = make_variants(batch)
    real = int(batch["attention_mask"].sum())
    params = sum(p.numel() for p in model.parameters())
    cpu = "cuda: " + torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, {cpu}, "
        f"torch.get_num_threads()={torch.get_num_threads()}, dtype {args.dtype}, "
        f"attention {model.config._attn_implementation}"
    )
    print(
        f"Llama: {args.layers} layers, hidden {args.hidden}, {args.heads} heads, intermediate {args.intermediate}, "
        f"vocab {args.vocab}, {params / 1e6:.1f}M parameters"
    )
    print(
        f"batch B={args.batch} x {args.seq}, {real} real tokens ({real / batch['attention_mask'].numel():.0%}), "
        f"alpha {ALPHA}; step = zero_grad + forward + backward, no optimizer; "
        f"{args.warmup} warm-up steps per variant, {args.rounds} interleaved rounds"
    )

    wall = time.perf_counter()
    load = os.getloadavg()[0]
    pairs = run_rounds(variants, model, args)
    print(
        f"\nStep time, s (median over rounds); ratio = ratio of medians; per-round ratios of back-to-back pairs: "
        f"median, min, max. Timing took {time.perf_counter() - wall:.0f}s; 1-min load average "
        f"{load:.2f} before, {os.getloadavg()[0]:.2f} after (on {os.cpu_count()} CPUs)"
    )
    print(
        f"{'variant':<16} {'vs':<8} {'median':>7} {'base':>7} {'ratio':>7} {'r.med':>7} {'r.min':>7} "
        f"{'r.max':>7}  target"
    )
    notes = {
        "hf_neftune": "  (transformers' hook, reference)",
        "symnoise_paired": "(two passes of B; no target)",
    }
    for name, baseline, target in COMPARISONS:
        print(ratio_row(name, baseline, pairs[name], target) + notes.get(name, ""))
    single = statistics.median(b for name, base, _ in COMPARISONS if base == "none@B" for _, b in pairs[name])
    double = statistics.median(
        b for name, base, _ in COMPARISONS if base == "none@2B" for _, b in pairs[name]
    )
    print(f"none@2B / none@B (cost of doubling the batch): {double / single:.3f}")

    print("\nPeak activation memory of one step (bytes saved for backward; peak of live bytes)")
    memory = {
        name: measure_memory(variants[name], model, args.device)
        for name in ("none@B", "uniform", "none@2B", "symnoise_concat", "symnoise_paired")
    }
    for name, figures in memory.items():
        extra = f"  cuda peak {figures['cuda_peak'] / 2**20:8.1f} MiB" if "cuda_peak" in figures else ""
        print(f"{name:<17} saved {figures['saved_peak'] / 2**20:8.1f} MiB{extra}")
    for key in memory["symnoise_paired"]:
        share = memory["symnoise_paired"][key] / memory["symnoise_concat"][key]
        verdict = "PASS" if share <= PAIRED_MEMORY_TARGET else "MISS"
        print(f"paired / concat ({key}): {share:.3f}  target <= {PAIRED_MEMORY_TARGET:.2f}  {verdict}")
    if args.smoke:
        print(SMOKE_BANNER)


if __name__ == "__main__":
    main()
