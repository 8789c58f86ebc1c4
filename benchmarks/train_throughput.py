"""Real (non-padding) tokens/s of `symnoise train` against a plain transformers ``Trainer`` with NEFTune.

What is compared, at equal work (the same model weights, the same tokenised examples, the same effective batch,
the same optimizer and schedule, the same number of optimizer steps):

* baseline: ``transformers.Trainer`` with ``neftune_noise_alpha=5``, ``DataCollatorForSeq2Seq`` (pad to the
  longest in the micro-batch) and random order, i.e. what one gets from transformers without symnoise;
* ``symnoise.train.train(config)``, the real recipe end to end, with NEFTune (``noise.method=uniform``) and with
  SymNoise, each with ``data.packing=rows`` (each batch packed into balanced rows of at most ``max_length``
  tokens with position-id resets), ``data.packing=padding_free`` (one row of concatenated sequences) and
  ``data.group_by_length`` (padded, but batches of similar lengths).

Equal work is exact: the training set is ``steps x effective batch`` examples and every run trains one epoch
over it, so every run consumes exactly the same real tokens, and tokens/s is that count divided by the
Trainer's own ``train_runtime`` (the training loop, without loading or saving). The collators are wrapped to
count the real and padded positions they emit, which checks that count and gives the padding fraction.

Targets: NEFTune in the recipe at least 1.5x the baseline's real tokens/s (2x with ``padding_free`` under
FlashAttention, ``--attn flash_attention_2``); SymNoise, which by design runs every sequence twice (``X + eps`` and
``X - eps``), at least 0.75x, and at least 0.95x of no noise at twice the batch (``2 x`` its real tokens/s against
the real tokens/s of the ``none ... 2x batch`` variants, which process as many sequences per step: what the noise
machinery itself costs).

On a GPU in `symnoise.train.metrics`' peak table the table also gives model MFU (``F x`` real tokens/s / peak) and
hardware MFU (``F x`` processed positions/s / peak: padding, packing filler and SymNoise's copy included), with
``F = 6 N`` FLOPs per token (full fine-tuning; N without the input embedding lookup), as `symnoise train` logs them.

The losses must agree within noise: after training, every run's model is scored on the same held-out examples
(clean forward, mean cross-entropy over response tokens). Each repeat uses another seed (data order and noise),
so the repeats give the seed-to-seed spread; a variant agrees with the baseline when the difference of the
median eval losses is at most the larger of the two seed-to-seed ranges (max - min).

Variants run interleaved: every repeat runs all variants once, in a fresh random order, after an untimed
warm-up, so a shared machine's load changes hit every variant alike. The table gives medians, the min..max over
repeats, and the ratio of medians with the min..max of the per-repeat ratios.

Data: the real 5,000-row Alpaca subset at ``$SYMNOISE_SHARED_DATA/alpaca/`` (default ``../shared/data``,
relative to the repository root) when present, else the synthetic tasks of `symnoise.synthetic`. Tokenizer: a
byte-level BPE trained on that data (`symnoise.synthetic.train_tokenizer`), so lengths are realistic. Model: a
randomly initialised Llama built from a ``LlamaConfig`` (4 layers, d=256 on CPU; a TinyLlama-shaped ~1B model
when CUDA is present, in bf16).

Disk: nothing is kept. Everything is written under one temporary folder (inside ``--work-dir`` when given),
deleted at the end, and each run's directory is deleted as soon as its model is scored: `symnoise train`
offers no setting that skips the checkpoint Trainer writes at the last step or the final model, so a ~1B run
writes both (about 13 GB) and only one run's worth is ever on disk.

``--smoke`` runs every variant, the baseline, the comparison and the tables on a tiny model for a few steps on
synthetic data, in seconds on one CPU thread; its figures and verdicts mean nothing. ``make test`` runs it
(tests/test_benchmarks.py), so a change of the recipe's API breaks the build rather than the next GPU run.

    python benchmarks/train_throughput.py                       # CPU default, about 8 minutes
    python benchmarks/train_throughput.py --smoke               # every variant, tiny, seconds (make test)
    python benchmarks/train_throughput.py --steps 8 --repeats 2 # quicker
    python benchmarks/train_throughput.py --model 1b --per-device-batch 16 --effective-batch 64 --max-length 512
    python benchmarks/train_throughput.py --device cuda --attn flash_attention_2 --repeats 2 \
        --variants "recipe neftune padding_free,recipe symnoise padding_free,recipe none padding_free 2x batch"
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import DataCollatorForSeq2Seq, Trainer, set_seed  # noqa: E402

from symnoise.data import Example, load_examples, real_token_count, tokenize_examples  # noqa: E402
from symnoise.files import read_json, read_json_lines  # noqa: E402
from symnoise.layout import RunLayout  # noqa: E402
from symnoise.synthetic import make_task_examples, tiny_llama_config, tokenizer_corpus, train_tokenizer  # noqa: E402
from symnoise.train import recipe  # noqa: E402
from symnoise.train.config import validate_config  # noqa: E402
from symnoise.train.metrics import flop_parameters, peak_flops, training_flops_per_token  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SYMNOISE_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
ALPACA = SHARED_DATA / "alpaca" / "alpaca_data_5000_random_subset.json"
NEFTUNE_TARGET = 1.5
NEFTUNE_FLASH_PADDING_FREE_TARGET = 2.0
SYMNOISE_TARGET = 0.75
SYMNOISE_VS_DOUBLED_BATCH_TARGET = 0.95
BASELINE = "trainer+neftune padded random"
SMOKE_BANNER = (
    "SMOKE RUN (--smoke): tiny model, a few steps; checks that the benchmark runs, figures mean nothing"
)
# --smoke: the defaults it replaces (flags given on the command line still win). Synthetic data (a path that
# is never a file), so the smoke run does not depend on the shared data folder.
SMOKE = dict(
    device="cpu",
    model="tiny",
    layers=2,
    hidden=32,
    vocab=1024,
    steps=2,
    per_device_batch=2,
    effective_batch=2,
    max_length=128,
    repeats=1,
    eval_examples=4,
    data=Path("synthetic (smoke run)"),
    threads=1,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="every variant on a tiny model for a few steps (seconds; what `make test` runs): checks that "
        "the benchmark still runs, its figures mean nothing",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="folder for the temporary model, data and run directories (default: the system's temp folder); "
        "all of them are deleted, each run's directory as soon as it is scored",
    )
    parser.add_argument(
        "--device",
        choices=("auto", "cuda", "cpu"),
        default="auto",
        help="auto: cuda when available; cuda fails without a GPU",
    )
    parser.add_argument(
        "--attn",
        default=None,
        help="model.attn_implementation for every run (sdpa, eager, flash_attention_2, ...); "
        "default: transformers' choice (SDPA)",
    )
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="peak TFLOP/s for the MFU table (default: the GPU's dense bf16 peak from "
        "symnoise.train.metrics; give it for an unlisted device)",
    )
    parser.add_argument(
        "--model",
        choices=("tiny", "1b"),
        default=None,
        help="tiny: --layers x --hidden Llama (CPU default); 1b: TinyLlama shape (CUDA default)",
    )
    parser.add_argument("--layers", type=int, default=4, help="layers of the tiny model")
    parser.add_argument("--hidden", type=int, default=256, help="width of the tiny model")
    parser.add_argument("--vocab", type=int, default=8192, help="BPE vocabulary trained on the data")
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per run (= one epoch)")
    parser.add_argument("--per-device-batch", type=int, default=8)
    parser.add_argument("--effective-batch", type=int, default=16, help="examples per optimizer step")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats, one seed each")
    parser.add_argument("--alpha", type=float, default=5.0)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument(
        "--eval-examples", type=int, default=64, help="held-out examples scored after training"
    )
    parser.add_argument(
        "--data", type=Path, default=ALPACA, help="Alpaca-format JSON; synthetic data if absent"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch.set_num_threads on CPU; 1 by default because on a shared machine a second "
        "thread waiting at every parallel barrier made steps up to 6x slower and far noisier",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--variants",
        default=None,
        help="comma-separated variant names to run besides the baseline (default: all)",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        parser.set_defaults(**SMOKE)
        args = parser.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    if args.model is None:
        args.model = "1b" if args.device == "cuda" else "tiny"
    if args.steps % 2:
        raise SystemExit(f"--steps must be even (the 2x batch variants run half the steps); got {args.steps}")
    return args


# ---------------------------------------------------------------------------------------------- setup
def load_corpus(args: argparse.Namespace) -> tuple[list[Example], list[Example], list[Example], str]:
    """(tokenizer corpus, training examples, held-out examples, name of the source). The training set is
    exactly ``steps x effective batch`` examples, so that one epoch is the whole run for every variant."""
    n_train = args.steps * args.effective_batch
    if args.data.is_file():
        examples, _ = load_examples(str(args.data), on_bad_row="skip")
        source = f"{args.data.name} (real Alpaca subset, {len(examples)} usable rows)"
    else:
        train, held_out = make_task_examples(
            max(n_train * 2, 2000), max(args.eval_examples, 64), seed=args.seed
        )
        examples = train + held_out
        source = f"symnoise.synthetic tasks ({args.data} not found)"
    shuffled = examples[:]
    random.Random(args.seed).shuffle(shuffled)
    if n_train + args.eval_examples > len(shuffled):
        raise SystemExit(
            f"--steps x --effective-batch + --eval-examples = {n_train + args.eval_examples} "
            f"exceeds the {len(shuffled)} examples available"
        )
    return examples, shuffled[:n_train], shuffled[n_train : n_train + args.eval_examples], source


def write_alpaca(examples: list[Example], path: Path) -> Path:
    rows = [{"instruction": e.instruction, "input": e.input, "output": e.output} for e in examples]
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def model_config(args: argparse.Namespace, vocab_size: int):
    if args.model == "1b":  # TinyLlama-1.1B's shape with the trained vocabulary: ~1.0B parameters
        return tiny_llama_config(
            vocab_size,
            hidden_size=2048,
            layers=22,
            heads=32,
            kv_heads=4,
            intermediate_size=5632,
            max_position_embeddings=2048,
        )
    return tiny_llama_config(
        vocab_size,
        hidden_size=args.hidden,
        layers=args.layers,
        heads=4,
        max_position_embeddings=max(1024, args.max_length),
    )


def build_model_dir(args: argparse.Namespace, tokenizer, directory: Path) -> tuple[int, float]:
    """Save one randomly initialised model and the tokenizer; every run starts from these weights. Returns the
    parameter count and the training FLOPs per token (full fine-tuning: 6 N, N without the embedding lookup)."""
    torch.manual_seed(args.seed)
    model = transformers.LlamaForCausalLM(model_config(args, len(tokenizer)))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return sum(p.numel() for p in model.parameters()), training_flops_per_token(*flop_parameters(model))


# ---------------------------------------------------------------------------------------------- runs
@dataclass(frozen=True)
class Variant:
    name: str
    method: str | None  # symnoise noise method; None: the baseline (transformers' own NEFTune)
    packing: str = "none"
    group_by_length: bool = False
    execution: str = "concat"  # SymNoise: one doubled forward, or two passes sharing eps
    batch_scale: int = 1  # 2: twice the batch for half the steps (the same examples): SymNoise's forward size


VARIANTS = (
    Variant(BASELINE, None),
    Variant("recipe neftune rows", "uniform", packing="rows"),
    Variant("recipe neftune padding_free", "uniform", packing="padding_free"),
    Variant("recipe neftune group_by_length", "uniform", group_by_length=True),
    Variant("recipe symnoise rows", "symnoise", packing="rows"),
    Variant("recipe symnoise padding_free", "symnoise", packing="padding_free"),
    Variant("recipe symnoise group_by_length", "symnoise", group_by_length=True),
    Variant("recipe neftune rows+grouped", "uniform", packing="rows", group_by_length=True),
    Variant("recipe symnoise rows+grouped", "symnoise", packing="rows", group_by_length=True),
    Variant("recipe symnoise rows paired", "symnoise", packing="rows", execution="paired"),
    Variant("recipe none rows 2x batch", "none", packing="rows", batch_scale=2),
    Variant("recipe none padding_free 2x batch", "none", packing="padding_free", batch_scale=2),
)


def selected_variants(names: str | None) -> list[Variant]:
    """The baseline and the named variants (all of them by default), in table order."""
    if names is None:
        return list(VARIANTS)
    wanted = {name.strip() for name in names.split(",") if name.strip()}
    unknown = wanted - {v.name for v in VARIANTS}
    if unknown:
        raise SystemExit(
            f"unknown --variants {sorted(unknown)}; choose from {[v.name for v in VARIANTS[1:]]}"
        )
    return [v for v in VARIANTS if v.name == BASELINE or v.name in wanted]


@dataclass
class RunResult:
    seconds: float  # the Trainer's train_runtime: the training loop only
    real_tokens: int
    positions: int  # real + padding positions the collator emitted
    train_loss: float  # mean logged loss over the last quarter of the steps
    eval_loss: float
    copies: int = 1  # 2 when SymNoise ran every position twice
    disk_bytes: int = 0  # what the run left in its directory (deleted right after)


@dataclass
class CountingCollator:
    """Wraps a collator and counts the token positions it emits: all of them, and the real (non-padding) ones."""

    inner: object
    real: int = 0
    positions: int = 0

    def __call__(self, features):
        batch = self.inner(features)
        ids = batch["input_ids"]
        self.real += int(real_token_count(batch))
        self.positions += ids.numel()
        return batch


@contextlib.contextmanager
def counted_recipe_collator() -> Iterator[list[CountingCollator]]:
    """Make `symnoise.train.recipe.train` use a counting wrapper around the collator it builds itself."""
    made: list[CountingCollator] = []
    original = recipe.make_collator

    def make_collator(config, tokenizer):
        made.append(CountingCollator(original(config, tokenizer)))
        return made[-1]

    recipe.make_collator = make_collator
    try:
        yield made
    finally:
        recipe.make_collator = original


def train_config(
    args: argparse.Namespace, variant: Variant, model_dir: Path, data: Path, out: Path, seed: int
):
    model = {"name": str(model_dir)}
    if args.attn:
        model["attn_implementation"] = args.attn
    scale = variant.batch_scale
    return validate_config(
        {
            "model": model,
            "data": {
                "path": str(data),
                "format": "alpaca",
                "max_length": args.max_length,
                "packing": variant.packing,
                "group_by_length": variant.group_by_length,
            },
            "noise": {
                "method": variant.method or "none",
                "alpha": args.alpha,
                "execution": variant.execution,
            },
            "training": {
                "output_dir": str(out),
                "epochs": 1,
                "max_steps": args.steps // scale,
                "per_device_batch_size": args.per_device_batch * scale,
                "effective_batch_size": args.effective_batch * scale,
                "learning_rate": args.learning_rate,
                "save_steps": args.steps + 1,
                "report_to": [],
                "logging_steps": 1,
                "seed": seed,
                "device": "cpu" if args.device == "cpu" else "auto",
            },
        }
    )


def last_quarter_mean(losses: list[float]) -> float:
    return statistics.fmean(losses[-max(1, len(losses) // 4) :])


def run_recipe(config, eval_items, tokenizer) -> RunResult:
    """`symnoise train` exactly as the CLI runs it, then the saved model scored on the held-out examples."""
    with counted_recipe_collator() as made:
        run_dir = recipe.train(config).run_dir
    layout = RunLayout(run_dir)
    summary = read_json(layout.summary)
    losses = [row["loss"] for row in read_json_lines(layout.metrics) if "loss" in row]
    model = transformers.AutoModelForCausalLM.from_pretrained(run_dir, dtype=torch.float32)
    model.to("cpu" if config.training.device == "cpu" else "cuda")
    copies = 2 if config.noise.symmetric and config.noise.method != "none" else 1
    return RunResult(
        summary["train_runtime_s"],
        made[0].real,
        made[0].positions,
        last_quarter_mean(losses),
        eval_loss(model, tokenizer, eval_items),
        copies,
    )


def run_baseline(config, alpha: float, eval_items) -> RunResult:
    """A plain ``Trainer`` with transformers' NEFTune, padding to the longest and random order. It gets the
    recipe's own TrainingArguments (same optimizer, schedule, batch, logging) and tokenised examples, so the
    collator, the sampler and the noise implementation are the only differences."""
    run_dir = recipe.check_run_dir(config, resume=False)
    set_seed(config.training.seed)
    tokenizer = recipe.load_tokenizer(config)
    dataset = recipe.load_data(config, tokenizer).train  # the recipe's own tokenised examples
    use_cuda = torch.cuda.is_available() and config.training.device != "cpu"
    precision = recipe.resolve_precision(config, use_cuda)
    args = recipe.training_arguments(config, run_dir, precision, has_eval=False, use_cpu=not use_cuda)
    model = recipe.load_model(config, precision)
    args.neftune_noise_alpha = alpha
    assert args.train_sampling_strategy == "random"
    collator = CountingCollator(
        DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100, return_tensors="pt")
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=dataset, data_collator=collator, processing_class=tokenizer
    )
    trainer.train()
    history = trainer.state.log_history
    seconds = next(entry["train_runtime"] for entry in reversed(history) if "train_runtime" in entry)
    losses = [entry["loss"] for entry in history if "loss" in entry]
    return RunResult(
        seconds,
        collator.real,
        collator.positions,
        last_quarter_mean(losses),
        eval_loss(trainer.model, tokenizer, eval_items),
    )


@torch.no_grad()
def eval_loss(model, tokenizer, items, batch_size: int = 16) -> float:
    """Mean cross-entropy per response token on the held-out items, clean (eval mode), in float32."""
    model.eval()
    device = next(model.parameters()).device
    collate = DataCollatorForSeq2Seq(
        tokenizer, padding="longest", label_pad_token_id=-100, return_tensors="pt"
    )
    total, count = 0.0, 0
    for start in range(0, len(items), batch_size):
        batch = {k: v.to(device) for k, v in collate(items[start : start + batch_size]).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        targets = batch["labels"][:, 1:]
        total += torch.nn.functional.cross_entropy(
            logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum"
        ).item()
        count += int((targets != -100).sum())
    return total / count


def run_variant(
    variant: Variant,
    args: argparse.Namespace,
    paths: dict[str, Path],
    seed: int,
    tag: str,
    eval_items,
    tokenizer,
) -> RunResult:
    """One training run and its score; its run directory (the checkpoint Trainer writes at the last step, and
    the recipe's final model) is deleted right after, so the benchmark never keeps a model on disk."""
    out = paths["runs"] / f"{tag}-{variant.name.replace(' ', '_')}-seed{seed}"
    config = train_config(args, variant, paths["model"], paths["train"], out, seed)
    try:
        with (
            contextlib.redirect_stdout(io.StringIO()),
            warnings.catch_warnings(),
        ):  # the Trainer's per-step log lines
            warnings.simplefilter("ignore")
            if variant.method is None:
                result = run_baseline(config, args.alpha, eval_items)
            else:
                result = run_recipe(config, eval_items, tokenizer)
        result.disk_bytes = folder_bytes(out)
        return result
    finally:
        shutil.rmtree(out, ignore_errors=True)


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


# ---------------------------------------------------------------------------------------------- report
def spread(values: list[float], fmt: str) -> str:
    return f"{statistics.median(values):{fmt}} [{min(values):{fmt}}..{max(values):{fmt}}]"


def baseline_target(name: str, attn: str | None) -> float | None:
    """The project's target for a variant's real tokens/s against the baseline's (None: a reference run)."""
    if "2x batch" in name:
        return None
    if "symnoise" in name:
        return SYMNOISE_TARGET
    if "padding_free" in name and attn and "flash" in attn:
        return NEFTUNE_FLASH_PADDING_FREE_TARGET
    return NEFTUNE_TARGET


def print_tables(
    results: dict[str, list[RunResult]], attn: str | None, flops_per_token: float, peak: float | None
) -> None:
    base = results[BASELINE]
    base_tps = [r.real_tokens / r.seconds for r in base]
    print(
        "\nThroughput (real tokens/s = non-padding tokens consumed / train_runtime; median [min..max] over repeats)"
    )
    print(f"{'variant':34s} {'real tok/s':>24s} {'padding':>8s} {'x baseline':>22s} {'target':>7s}  verdict")
    for name, runs in results.items():
        tps = [r.real_tokens / r.seconds for r in runs]
        padding = 1 - sum(r.real_tokens for r in runs) / sum(r.positions for r in runs)
        line = f"{name:34s} {spread(tps, '8.0f'):>24s} {padding:8.1%}"
        if name != BASELINE:
            per_repeat = [t / b for t, b in zip(tps, base_tps, strict=True)]
            ratio = statistics.median(tps) / statistics.median(base_tps)
            target = baseline_target(name, attn)
            line += f" {ratio:6.3f} [{min(per_repeat):.2f}..{max(per_repeat):.2f}]"
            if target is not None:
                line += f" {target:>6.2f}  {'PASS' if ratio >= target else 'MISS'}"
        print(line)
    print_doubled_batch_table(results)
    if peak:
        print_mfu_table(results, flops_per_token, peak)
    base_eval = [r.eval_loss for r in base]
    print(
        "\nLoss after the run (eval: clean, on the held-out examples; train: mean logged loss of the last "
        "quarter of steps)"
    )
    print(
        f"{'variant':34s} {'eval loss':>24s} {'train loss':>24s} {'delta eval':>10s} {'noise':>7s}  verdict"
    )
    for name, runs in results.items():
        evals = [r.eval_loss for r in runs]
        line = f"{name:34s} {spread(evals, '.4f'):>24s} {spread([r.train_loss for r in runs], '.4f'):>24s}"
        if name != BASELINE:
            delta = statistics.median(evals) - statistics.median(base_eval)
            tolerance = max(max(base_eval) - min(base_eval), max(evals) - min(evals))
            line += f" {delta:+10.4f} {tolerance:7.4f}  {'agree' if abs(delta) <= tolerance else 'DIFFER'}"
        print(line)
    print("noise = the larger seed-to-seed range (max - min) of the two; agree when |delta| <= noise")


def print_doubled_batch_table(results: dict[str, list[RunResult]]) -> None:
    """SymNoise against no noise at twice the batch: the same sequences per forward, so 2 x SymNoise's real tokens/s
    against the reference's real tokens/s is what the noise itself costs."""
    pairs = [
        (name, f"recipe none {packing} 2x batch")
        for name in results
        for packing in ("rows", "padding_free")
        if name.startswith("recipe symnoise") and name.endswith(packing)
    ]
    pairs = [(name, ref) for name, ref in pairs if ref in results]
    if not pairs:
        return
    print(
        "\nSymNoise against no noise at twice the batch (2 x real tok/s / reference real tok/s; median [min..max])"
    )
    for name, ref in pairs:
        per_repeat = [
            2 * (r.real_tokens / r.seconds) / (b.real_tokens / b.seconds)
            for r, b in zip(results[name], results[ref], strict=True)
        ]
        ratio = (
            2
            * statistics.median(r.real_tokens / r.seconds for r in results[name])
            / statistics.median(b.real_tokens / b.seconds for b in results[ref])
        )
        verdict = "PASS" if ratio >= SYMNOISE_VS_DOUBLED_BATCH_TARGET else "MISS"
        print(
            f"{name:34s} vs {ref:34s} {ratio:6.3f} [{min(per_repeat):.2f}..{max(per_repeat):.2f}] "
            f"{SYMNOISE_VS_DOUBLED_BATCH_TARGET:>6.2f}  {verdict}"
        )


def print_mfu_table(results: dict[str, list[RunResult]], flops_per_token: float, peak: float) -> None:
    """Model MFU (real tokens) and hardware MFU (every processed position, SymNoise's copy included)."""
    print(
        f"\nMFU (F = {flops_per_token / 1e9:.3f} GFLOP per token, peak {peak / 1e12:.1f} TFLOP/s dense bf16; "
        "median [min..max])"
    )
    print(f"{'variant':34s} {'model MFU':>22s} {'hardware MFU':>22s}")
    for name, runs in results.items():
        model = [flops_per_token * r.real_tokens / r.seconds / peak for r in runs]
        hardware = [flops_per_token * r.positions * r.copies / r.seconds / peak for r in runs]
        print(f"{name:34s} {spread(model, '.3f'):>22s} {spread(hardware, '.3f'):>22s}")


def machine_line(args: argparse.Namespace) -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next(
            (line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")),
            platform.processor(),
        )
    except OSError:
        model = platform.processor()
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {args.threads} threads"
    return (
        f"{model}, {os.cpu_count()} cores, device {device}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}"
    )


def main() -> None:
    args = parse_args()
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    if args.smoke:
        print(SMOKE_BANNER)
    corpus, train_examples, held_out, source = load_corpus(args)
    tokenizer = train_tokenizer(tokenizer_corpus(corpus), vocab_size=args.vocab)
    eval_items = list(tokenize_examples(held_out, tokenizer, "alpaca", args.max_length))
    if args.work_dir is not None:
        args.work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="symnoise-throughput-", dir=args.work_dir) as tmp:
        # The recipe's tokenised-data cache goes with everything else, not into the user's ~/.cache.
        os.environ["SYMNOISE_CACHE"] = str(Path(tmp) / "cache")
        print(f"work dir: {tmp} (deleted at the end; each run directory right after its run)")
        paths = {
            "model": Path(tmp) / "model",
            "runs": Path(tmp) / "runs",
            "train": write_alpaca(train_examples, Path(tmp) / "train.json"),
        }
        n_params, flops_per_token = build_model_dir(args, tokenizer, paths["model"])
        print(f"machine: {machine_line(args)}; load average at start {os.getloadavg()}")
        print(
            f"data: {source}; {len(train_examples)} training examples (= {args.steps} steps x "
            f"{args.effective_batch}), {len(eval_items)} held-out; tokenizer vocab {len(tokenizer)}"
        )
        print(
            f"model: Llama, {n_params / 1e6:.1f}M parameters ({args.model}); per-device batch "
            f"{args.per_device_batch}, effective batch {args.effective_batch}, max length {args.max_length}, "
            f"alpha {args.alpha}, lr {args.learning_rate}, {args.repeats} repeats",
            flush=True,
        )
        started = time.perf_counter()
        warm_up = [v for v in VARIANTS if v.name in (BASELINE, "recipe symnoise rows")]
        for variant in warm_up:  # untimed warm-up of the process: kernels, allocator, imports
            warm = argparse.Namespace(**{**vars(args), "steps": 2})
            run_variant(variant, warm, paths, args.seed, "warmup", eval_items[:4], tokenizer)
        chosen = selected_variants(args.variants)
        results: dict[str, list[RunResult]] = {v.name: [] for v in chosen}
        rng = random.Random(args.seed)
        loads = []
        for repeat in range(args.repeats):
            order = list(chosen)
            rng.shuffle(order)
            for variant in order:
                result = run_variant(
                    variant, args, paths, args.seed + repeat, f"r{repeat}", eval_items, tokenizer
                )
                results[variant.name].append(result)
                loads.append(os.getloadavg()[0])
                print(
                    f"  repeat {repeat + 1}/{args.repeats} {variant.name:34s} {result.seconds:7.2f} s "
                    f"{result.real_tokens / result.seconds:8.0f} real tok/s  eval loss {result.eval_loss:.4f}",
                    flush=True,
                )
        real = {r.real_tokens for runs in results.values() for r in runs}
        assert len(real) == 1, f"runs consumed different real token counts: {real}"
        disk = max(r.disk_bytes for runs in results.values() for r in runs)
        print(
            f"\nevery run consumed the same {real.pop()} real tokens; total time "
            f"{time.perf_counter() - started:.0f} s; 1-min load average during the runs "
            f"{min(loads):.2f}..{max(loads):.2f}; a run directory held at most {disk / 2**20:.1f} MiB "
            "(end-of-run checkpoint and final model), deleted after its run"
        )
        peak = (
            args.peak_tflops * 1e12
            if args.peak_tflops
            else (peak_flops(torch.cuda.get_device_name()) if args.device == "cuda" else None)
        )
        print_tables(results, args.attn, flops_per_token, peak)
    if args.smoke:
        print(SMOKE_BANNER)


if __name__ == "__main__":
    main()
