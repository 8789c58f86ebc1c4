"""Real (non-padding) tokens/s of `symnoise train` against transformers' and TRL's trainers with NEFTune.

Each baseline is set up the way a user who knows transformers and TRL would set it up.

What is compared, at equal work (the same model weights, the same tokenised examples, the same effective batch,
the same optimizer and schedule, one epoch):

* baselines, each with transformers' NEFTune (``neftune_noise_alpha=5``, the same value in TRL's ``SFTConfig``):

  - ``trainer+neftune padded random``: ``transformers.Trainer``, ``DataCollatorForSeq2Seq`` (pad to the longest in
    the micro-batch), random order: what one gets from transformers without symnoise (the "x baseline" column);
  - ``trainer+neftune group_by_length``: the same with transformers' length-grouped sampler
    (``train_sampling_strategy="group_by_length"``, transformers 5's name for ``group_by_length=True``);
  - ``trainer+neftune flattening``: the Trainer with ``DataCollatorWithFlattening``, padding-free (each
    micro-batch one row, position ids restarting per sequence, no attention mask). transformers 5.25 keeps the
    sequences of such a row apart under SDPA and eager attention as well as FlashAttention: with no attention mask
    and no KV cache (the Trainer sets ``use_cache=False``) its mask builder reads the packed sequences from the
    position ids and builds a block-diagonal mask (dense over the row, as for the recipe's ``padding_free``). The
    run checks it on this model before timing (`check_flattening`), and with ``--alpha 0`` this baseline trains
    to the padded baseline's losses exactly;
  - ``trl sft+neftune packing`` and ``... 1 row``: TRL's ``SFTTrainer`` with ``packing=True`` and the installed
    TRL's default ``packing_strategy`` (``bfd`` in TRL 1.16: best-fit decreasing into rows of at most
    ``max_length`` tokens, which also turns on TRL's padding-free collator: the rows of a micro-batch go into one
    row with position ids), on the same tokenised examples with their labels (so the same response tokens are
    trained) and with TRL's own loss (its fused LM head, computed only where a label is trained). Its batch size
    counts packed rows; the first takes as many rows per micro-batch as hold one per-device batch of examples (the
    other runs' tokens per micro-batch), the second one row per micro-batch (attention never spans more than
    ``max_length`` tokens, which matters without FlashAttention);

* ``symnoise.train.train(config)``, the real recipe end to end, with NEFTune (``noise.method=uniform``) and with
  SymNoise, each with ``data.packing=rows`` (each batch packed into balanced rows of at most ``max_length``
  tokens with position-id resets), ``data.packing=padding_free`` (one row of concatenated sequences) and
  ``data.group_by_length`` (padded, but batches of similar lengths).

transformers' NEFTune draws its noise with ``alpha / sqrt(L d)`` for ``L`` the length of the whole row, padding
included: in a flattened or packed row that is the sum of several sequences, so those baselines train with
weaker noise than the padded one (and than symnoise, which scales per sequence). That is the baseline as it
ships; its eval loss shows the effect.

Equal work: the training set is ``steps x effective batch`` examples and every run trains one epoch over it, so
every run consumes exactly the same real tokens (checked: the run stops if any count differs), and tokens/s is
that count divided by the Trainer's own ``train_runtime`` (the training loop, without loading or saving). The
collators are wrapped to count the real and padded positions they emit. Every run takes the same S = ``steps``
optimizer steps (checked; S / 2 at twice the batch), except TRL's, whose batches are whole packed rows: with R
rows, ``b`` rows per micro-batch and ``a`` micro-batches per step its epoch takes ``ceil(ceil(R / b) / a)``
steps, and ``a`` is chosen to make that S; where no whole ``a`` does, the nearest count (`packed_batch_shape`;
the run prints the shape and count). The default CPU run packs 192 examples into 95 rows and takes 12 steps
like the others.

Targets: symnoise's best NEFTune variant at least 1.3x the real tokens/s of the best baseline (by median), with
its eval loss within the seed spread of that baseline; NEFTune in the recipe at least 1.5x the padded
baseline's real tokens/s (2x with ``padding_free`` under FlashAttention, ``--attn flash_attention_2``); SymNoise,
which by design runs every sequence twice (``X + eps`` and ``X - eps``), at least 0.75x the padded baseline, and
at least 0.95x of no noise at twice the batch (``2 x`` its real tokens/s against the real tokens/s of the
``none ... 2x batch`` variants, which process as many sequences per step: what the noise machinery itself costs).

On a GPU in `symnoise.train.metrics`' peak table the table also gives model MFU (``F x`` real tokens/s / peak) and
hardware MFU (``F x`` processed positions/s / peak: padding, packing filler and SymNoise's copy included), with
``F = 6 N`` FLOPs per token (full fine-tuning; N without the input embedding lookup), as `symnoise train` logs them.

The losses must agree within noise: after training, every run's model is scored on the same held-out examples
(clean forward, mean cross-entropy over response tokens). Each repeat uses another seed (data order and noise),
so the repeats give the seed-to-seed spread; a variant agrees with a baseline when the difference of the
median eval losses is at most the larger of the two seed-to-seed ranges (max - min).

Variants run interleaved: every repeat runs all variants once, in a fresh random order, after an untimed
warm-up, so a shared machine's load changes hit every variant alike. The table gives medians, the min..max over
repeats, and the ratio of medians with the min..max of the per-repeat ratios.

Data: the real 5,000-row Alpaca subset at ``$SYMNOISE_SHARED_DATA/alpaca/`` (default ``../shared/data``,
relative to the repository root) when present, else the synthetic tasks of `symnoise.synthetic`. Tokenizer: a
byte-level BPE trained on that data (`symnoise.synthetic.train_tokenizer`), so lengths are realistic. Model: a
randomly initialised Llama built from a ``LlamaConfig`` (4 layers, d=256 on CPU; a TinyLlama-shaped ~1B model
when CUDA is present, in bf16).

Disk: no checkpoint and no model is written. The recipe runs with ``training.save_model: false`` and the
baselines with its ``save_strategy="no"``; each trained model is scored in memory, and each run directory
(config and metrics only; checked to hold no weights) is deleted right after. Everything else (the initial
model, the data, the tokenised-data cache) lives in one temporary folder (inside ``--work-dir`` when given),
deleted at the end.

``--smoke`` runs every variant, every baseline, the comparisons and the tables on a tiny model for a few steps on
synthetic data, in seconds on one CPU thread; its figures and verdicts mean nothing. ``make test`` runs it
(tests/test_benchmarks.py), so a change of the recipe's API breaks the build rather than the next GPU run.

    python benchmarks/train_throughput.py                       # CPU default, about 10 minutes
    python benchmarks/train_throughput.py --smoke               # every variant, tiny, seconds (make test)
    python benchmarks/train_throughput.py --steps 8 --repeats 2 # quicker
    python benchmarks/train_throughput.py --model 1b --per-device-batch 16 --effective-batch 64 --max-length 512
    python benchmarks/train_throughput.py --device cuda --attn flash_attention_2 --repeats 2 \
        --variants "recipe neftune padding_free,recipe symnoise padding_free,recipe none padding_free 2x batch"
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
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
from transformers import (  # noqa: E402
    DataCollatorForSeq2Seq,
    DataCollatorWithFlattening,
    Trainer,
    TrainingArguments,
    set_seed,
)

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
BEST_BASELINE_TARGET = 1.3
SYMNOISE_TARGET = 0.75
SYMNOISE_VS_DOUBLED_BATCH_TARGET = 0.95
BASELINE = "trainer+neftune padded random"
GROUPED_BASELINE = "trainer+neftune group_by_length"
FLATTENED_BASELINE = "trainer+neftune flattening"
PACKED_BASELINE = "trl sft+neftune packing"
PACKED_ROW_BASELINE = "trl sft+neftune packing 1 row"
# Larger than float32 round-off between a packed row and the same sequences run alone, far smaller than what
# attending across sequences changes (a randomly initialised model's logits move by 1e-2 and more).
FLATTENING_TOLERANCE = 1e-3
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
        help="comma-separated variant names to run besides the padded baseline, the other baselines "
        "included (default: all)",
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
    method: str | None  # symnoise noise method; None: a baseline (transformers' own NEFTune)
    packing: str = "none"
    group_by_length: bool = False
    execution: str = "concat"  # SymNoise: one doubled forward, or two passes sharing eps
    batch_scale: int = 1  # 2: twice the batch for half the steps (the same examples): SymNoise's forward size
    baseline: str | None = None  # a baseline's layout: padded, grouped, flattened (Trainer) or packed (TRL)
    packed_rows: int | None = (
        None  # TRL's packed rows per micro-batch; None: those of --per-device-batch examples
    )


BASELINES = (
    Variant(BASELINE, None, baseline="padded"),
    Variant(GROUPED_BASELINE, None, baseline="grouped"),
    Variant(FLATTENED_BASELINE, None, baseline="flattened"),
    Variant(PACKED_BASELINE, None, baseline="packed"),
    Variant(PACKED_ROW_BASELINE, None, baseline="packed", packed_rows=1),
)
BASELINE_NAMES = frozenset(v.name for v in BASELINES)
VARIANTS = (
    *BASELINES,
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
    steps: int  # optimizer steps taken
    copies: int = 1  # 2 when SymNoise ran every position twice
    disk_bytes: int = 0  # what the run left in its directory (deleted right after)
    note: str = ""  # how a packed baseline's batches were shaped


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
def counted_recipe_run() -> Iterator[tuple[list[CountingCollator], list[torch.nn.Module]]]:
    """Make `symnoise.train.recipe.train` use a counting wrapper around the collator it builds itself, and keep the
    model it loads (trained in place), to be scored without saving it."""
    made: list[CountingCollator] = []
    models: list[torch.nn.Module] = []
    make_collator, load_model = recipe.make_collator, recipe.load_model

    def counting_collator(config, tokenizer):
        made.append(CountingCollator(make_collator(config, tokenizer)))
        return made[-1]

    def kept_model(*args, **kwargs):
        models.append(load_model(*args, **kwargs))
        return models[-1]

    recipe.make_collator, recipe.load_model = counting_collator, kept_model
    try:
        yield made, models
    finally:
        recipe.make_collator, recipe.load_model = make_collator, load_model


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
                "save_model": False,  # no checkpoint, no final model: the trained model is scored in memory
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
    """`symnoise train` exactly as the CLI runs it, then the trained model scored on the held-out examples."""
    with counted_recipe_run() as (made, models):
        run_dir = recipe.train(config).run_dir
    layout = RunLayout(run_dir)
    summary = read_json(layout.summary)
    losses = [row["loss"] for row in read_json_lines(layout.metrics) if "loss" in row]
    copies = 2 if config.noise.symmetric and config.noise.method != "none" else 1
    return RunResult(
        summary["train_runtime_s"],
        made[0].real,
        made[0].positions,
        last_quarter_mean(losses),
        eval_loss(models[0], tokenizer, eval_items),
        summary["steps"],
        copies,
    )


def run_baseline(config, args: argparse.Namespace, variant: Variant, eval_items) -> RunResult:
    """A baseline as a user who knows transformers and TRL would set it up, with transformers' NEFTune
    (``neftune_noise_alpha``). It gets the recipe's own TrainingArguments (optimizer, schedule, batch, logging, no
    saving) and tokenised examples, so the batch layout, the sampler, the loss computation and the noise
    implementation are the only differences."""
    run_dir = recipe.check_run_dir(config, resume=False)
    set_seed(config.training.seed)
    tokenizer = recipe.load_tokenizer(config)
    dataset = recipe.load_data(config, tokenizer).train  # the recipe's own tokenised examples
    use_cuda = torch.cuda.is_available() and config.training.device != "cpu"
    precision = recipe.resolve_precision(config, use_cuda)
    training_args = recipe.training_arguments(
        config, run_dir, precision, has_eval=False, use_cpu=not use_cuda
    )
    assert training_args.save_strategy == "no" and training_args.train_sampling_strategy == "random"
    model = recipe.load_model(config, precision)
    training_args.neftune_noise_alpha = args.alpha
    if variant.baseline == "packed":
        trainer, note = trl_trainer(model, training_args, dataset, tokenizer, config, variant.packed_rows)
    else:
        trainer, note = hf_trainer(model, training_args, dataset, tokenizer, variant.baseline), ""
    collator = trainer.data_collator
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
        trainer.state.global_step,
        note=note,
    )


def hf_trainer(model, training_args, dataset, tokenizer, layout: str) -> Trainer:
    """transformers' ``Trainer`` with one of its own batch layouts:

    * padded: ``DataCollatorForSeq2Seq`` (pad to the longest of the micro-batch), random order;
    * grouped: the same, with transformers' length-grouped sampler (``train_sampling_strategy="group_by_length"``,
      which replaced ``group_by_length=True`` in transformers 5);
    * flattened: ``DataCollatorWithFlattening``, padding-free: each micro-batch one row of its sequences, position
      ids restarting per sequence, no attention mask. transformers then finds the packed sequences from the position
      ids and keeps them apart, under SDPA and eager attention too (a block-diagonal mask over the row), because the
      Trainer runs without a KV cache (``use_cache=False``); `flattening_error` checks that on this model.
    """
    if layout == "grouped":
        training_args.train_sampling_strategy = "group_by_length"
    if layout == "flattened":
        inner = DataCollatorWithFlattening()
    else:
        inner = DataCollatorForSeq2Seq(
            tokenizer, padding="longest", label_pad_token_id=-100, return_tensors="pt"
        )
    return Trainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        data_collator=CountingCollator(inner),
        processing_class=tokenizer,
    )


def trl_trainer(model, training_args, dataset, tokenizer, config, packed_rows: int | None):
    """TRL's ``SFTTrainer`` with ``packing=True`` and its default packing strategy, on the same tokenised examples
    (``input_ids`` and ``labels``: TRL keeps given labels, so the loss covers the same response tokens), with
    ``SFTConfig(neftune_noise_alpha=...)``. Returns the trainer and a note on its batch shape.

    TRL packs the N examples into R rows of at most ``max_length`` tokens (best-fit decreasing keeps every
    sequence whole; none is longer than ``max_length``, so nothing is cut), and its padding-free collator puts the
    rows of a micro-batch into one row. Its batch size counts packed rows, so equal work is set in rows: one epoch
    over the R rows, i.e. over every example once, as for every other run, with ``b`` rows per micro-batch and
    ``a`` micro-batches per optimizer step such that the epoch takes the others' S optimizer steps (or, where no
    whole b and a give exactly S, the nearest count: see `packed_batch_shape`). ``b`` is ``packed_rows`` when
    given (1: every micro-batch one packed row, so attention without FlashAttention never spans more than
    ``max_length`` tokens), else the rows that hold one per-device batch of examples (``per_device x R / N``: the
    other runs' tokens per micro-batch)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer
    from trl.data_utils import pack_dataset

    examples = Dataset.from_list(
        [
            {"input_ids": list(map(int, e["input_ids"])), "labels": list(map(int, e["labels"]))}
            for e in dataset
        ]
    )
    strategy = next(f.default for f in dataclasses.fields(SFTConfig) if f.name == "packing_strategy")
    rows = len(pack_dataset(examples, config.data.max_length, strategy))
    steps = len(dataset) // config.training.effective_batch_size  # the optimizer steps of one epoch elsewhere
    wanted = packed_rows or config.training.per_device_batch_size * rows / len(dataset)
    per_batch, accumulation, epoch_steps = packed_batch_shape(rows, steps, wanted)
    max_steps = config.training.max_steps
    own = {f.name: getattr(training_args, f.name) for f in dataclasses.fields(TrainingArguments) if f.init}
    sft_args = SFTConfig(
        **{
            **own,
            "per_device_train_batch_size": per_batch,
            "gradient_accumulation_steps": accumulation,
            "num_train_epochs": 1,
            "max_steps": max_steps if 0 < max_steps < steps else -1,  # fewer: the warm-up; else one epoch
            "packing": True,
            "max_length": config.data.max_length,
        }
    )
    trainer = SFTTrainer(model=model, args=sft_args, train_dataset=examples, processing_class=tokenizer)
    assert (
        len(trainer.train_dataset) == rows
        and sft_args.neftune_noise_alpha == training_args.neftune_noise_alpha
    )
    trainer.data_collator = CountingCollator(trainer.data_collator)
    note = (
        f"{len(dataset)} examples packed ({strategy}) into {rows} rows of at most {config.data.max_length} "
        f"tokens; rows per micro-batch {per_batch}, micro-batches per step {accumulation}: "
        f"{epoch_steps} optimizer steps for the epoch"
    )
    return trainer, note


def packed_batch_shape(rows: int, steps: int, rows_per_micro_batch: float) -> tuple[int, int, int]:
    """(rows per micro-batch b, micro-batches per optimizer step a, optimizer steps of the epoch) for one epoch
    over ``rows`` packed rows, as transformers' Trainer counts them (``ceil(ceil(rows / b) / a)``, the last
    micro-batch and step taking what is left): the epoch closest to ``steps`` optimizer steps, then b closest to
    ``rows_per_micro_batch``, then the fewer steps. With R rows and S steps there is not always such a b and a
    (77 rows in 12 steps: 11 or 13)."""
    best = None
    for per_batch in range(1, rows + 1):
        micro_batches = -(-rows // per_batch)
        for accumulation in range(1, micro_batches + 1):
            taken = -(-micro_batches // accumulation)
            key = (abs(taken - steps), abs(per_batch - rows_per_micro_batch), taken)
            if best is None or key < best[0]:
                best = (key, (per_batch, accumulation, taken))
    return best[1]


@torch.no_grad()
def flattening_error(model_dir: Path, items, attn: str | None) -> float:
    """The largest logit difference between the sequences of a ``DataCollatorWithFlattening`` row (the layout of
    the padding-free baselines) and the same sequences run one by one, without a KV cache as the Trainer runs
    them: round-off when the model keeps the packed sequences apart, far more when they attend to each other."""
    kwargs = {"attn_implementation": attn} if attn else {}
    model = transformers.AutoModelForCausalLM.from_pretrained(  # hub kernels off, as in every load
        model_dir, dtype=torch.float32, use_kernels=False, **kwargs
    ).eval()
    row = DataCollatorWithFlattening()(items)
    packed = model(input_ids=row["input_ids"], position_ids=row["position_ids"], use_cache=False).logits[0]
    worst, start = 0.0, 0
    for item in items:
        n = len(item["input_ids"])
        alone = model(input_ids=torch.tensor([list(item["input_ids"])]), use_cache=False).logits[0]
        worst = max(worst, (alone - packed[start : start + n]).abs().max().item())
        start += n
    return worst


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
    """One training run and its score. Every run trains with ``training.save_model: false`` (the baselines with
    its ``save_strategy="no"``), so none writes a checkpoint or a model (checked); its run directory (config,
    metrics) is deleted right after."""
    out = paths["runs"] / f"{tag}-{variant.name.replace(' ', '_')}-seed{seed}"
    config = train_config(args, variant, paths["model"], paths["train"], out, seed)
    try:
        with (
            contextlib.redirect_stdout(io.StringIO()),
            warnings.catch_warnings(),
        ):  # the Trainer's per-step log lines
            warnings.simplefilter("ignore")
            if variant.baseline is not None:
                result = run_baseline(config, args, variant, eval_items)
            else:
                result = run_recipe(config, eval_items, tokenizer)
        weights = [*out.rglob("checkpoint-*"), *out.rglob("*.safetensors"), *out.rglob("*.bin")]
        assert not weights, f"{variant.name} wrote a checkpoint or model: {weights}"
        result.disk_bytes = folder_bytes(out)
        return result
    finally:
        shutil.rmtree(out, ignore_errors=True)


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


# ---------------------------------------------------------------------------------------------- report
def spread(values: list[float], fmt: str) -> str:
    return f"{statistics.median(values):{fmt}} [{min(values):{fmt}}..{max(values):{fmt}}]"


def tokens_per_s(runs: list[RunResult]) -> list[float]:
    return [r.real_tokens / r.seconds for r in runs]


def baseline_target(name: str, attn: str | None) -> float | None:
    """The project's target for a variant's real tokens/s against the padded baseline's (None: a reference run:
    another baseline, or no noise at twice the batch)."""
    if "2x batch" in name or name in BASELINE_NAMES:
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
    base_tps = tokens_per_s(base)
    print(
        "\nThroughput (real tokens/s = non-padding tokens consumed / train_runtime; median [min..max] over repeats)"
    )
    print(f"{'variant':34s} {'real tok/s':>24s} {'padding':>8s} {'x baseline':>22s} {'target':>7s}  verdict")
    for name, runs in results.items():
        tps = tokens_per_s(runs)
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
            delta, tolerance, verdict = loss_agreement(runs, base)
            line += f" {delta:+10.4f} {tolerance:7.4f}  {verdict}"
        print(line)
    print("noise = the larger seed-to-seed range (max - min) of the two; agree when |delta| <= noise")
    print_best_baseline_comparison(results)


def loss_agreement(runs: list[RunResult], reference: list[RunResult]) -> tuple[float, float, str]:
    """(difference of the median eval losses, the larger of the two seed-to-seed ranges, agree or DIFFER)."""
    evals, base = [r.eval_loss for r in runs], [r.eval_loss for r in reference]
    delta = statistics.median(evals) - statistics.median(base)
    tolerance = max(max(base) - min(base), max(evals) - min(evals))
    return delta, tolerance, "agree" if abs(delta) <= tolerance else "DIFFER"


def print_best_baseline_comparison(results: dict[str, list[RunResult]]) -> None:
    """symnoise's fastest NEFTune variant against the fastest baseline (each by median real tokens/s): the target
    that counts, since a user who knows the ecosystem picks the best of what transformers and TRL offer."""
    baselines = [name for name in results if name in BASELINE_NAMES]
    neftune = [name for name in results if name.startswith("recipe neftune")]
    if not neftune:
        return

    def median_tps(name: str) -> float:
        return statistics.median(tokens_per_s(results[name]))

    base, best = max(baselines, key=median_tps), max(neftune, key=median_tps)
    per_repeat = [
        t / b for t, b in zip(tokens_per_s(results[best]), tokens_per_s(results[base]), strict=True)
    ]
    ratio = median_tps(best) / median_tps(base)
    delta, tolerance, verdict = loss_agreement(results[best], results[base])
    print(
        "\nsymnoise's best NEFTune variant against the best baseline (real tok/s, median [min..max] over repeats; "
        "ratio of medians [min..max of the per-repeat ratios])"
    )
    print(f"best baseline: {base} {spread(tokens_per_s(results[base]), '.0f')}")
    print(f"best symnoise NEFTune variant: {best} {spread(tokens_per_s(results[best]), '.0f')}")
    print(
        f"ratio: {ratio:.3f} [{min(per_repeat):.2f}..{max(per_repeat):.2f}]  target {BEST_BASELINE_TARGET:.2f}  "
        f"{'PASS' if ratio >= BEST_BASELINE_TARGET else 'MISS'}"
    )
    print(f"eval loss against it: delta {delta:+.4f}, noise {tolerance:.4f}  {verdict}")


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


def check_flattening(chosen: list[Variant], model_dir: Path, items, attn: str | None) -> None:
    """Refuse to time the padding-free baselines on a model that lets their packed sequences attend to each other
    (their losses and speed would be those of another computation). FlashAttention kernels need CUDA and half
    precision, so the check runs only for the attention that runs on the CPU in float32 (SDPA, eager)."""
    if not any(v.baseline in ("flattened", "packed") for v in chosen):
        return
    if attn not in (None, "sdpa", "eager"):
        print(
            f"padding-free baselines: {attn} keeps packed sequences apart by their position ids (not checked)"
        )
        return
    error = flattening_error(model_dir, items, attn)
    if error > FLATTENING_TOLERANCE:
        raise SystemExit(
            f"DataCollatorWithFlattening: the packed sequences attend to each other under {attn or 'sdpa'} "
            f"(largest logit difference {error:.2e} against the sequences alone); the padding-free baselines "
            "would be wrong"
        )
    print(
        f"padding-free baselines: the model keeps packed sequences apart under {attn or 'sdpa'} (largest logit "
        f"difference {error:.1e} against the sequences run alone)"
    )


def optimizer_steps_line(chosen: list[Variant], results: dict[str, list[RunResult]], steps: int) -> str:
    """Every run's optimizer steps: S (S / 2 at twice the batch), checked; the packed baseline's, in packed rows,
    as close to S as whole rows allow (its note says how its batches were shaped)."""
    packed = ""
    for variant in chosen:
        taken = {r.steps for r in results[variant.name]}
        if variant.baseline == "packed":
            packed += f"; {variant.name}: {', '.join(sorted({r.note for r in results[variant.name]}))}"
            continue
        assert taken == {steps // variant.batch_scale}, f"{variant.name} took {taken} optimizer steps"
    return f"optimizer steps: {steps} per run ({steps // 2} at twice the batch){packed}"


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
    from importlib.metadata import version

    return (
        f"{model}, {os.cpu_count()} cores, device {device}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}, trl {version('trl')}"
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
        chosen = selected_variants(args.variants)
        check_flattening(chosen, paths["model"], eval_items[:4], args.attn)
        started = time.perf_counter()
        warm_up = [v for v in chosen if v.baseline is not None or v.name == "recipe symnoise rows"]
        for variant in warm_up:  # untimed warm-up of the process: kernels, allocator, imports
            warm = argparse.Namespace(**{**vars(args), "steps": 2})
            run_variant(variant, warm, paths, args.seed, "warmup", eval_items[:4], tokenizer)
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
                    f"{result.real_tokens / result.seconds:8.0f} real tok/s {result.real_tokens:8d} real tokens "
                    f"{result.steps:4d} steps  eval loss {result.eval_loss:.4f}",
                    flush=True,
                )
        real = {r.real_tokens for runs in results.values() for r in runs}
        assert len(real) == 1, f"runs consumed different real token counts: {real}"
        disk = max(r.disk_bytes for runs in results.values() for r in runs)
        print(
            f"\nevery run consumed the same {real.pop()} real tokens; total time "
            f"{time.perf_counter() - started:.0f} s; 1-min load average during the runs "
            f"{min(loads):.2f}..{max(loads):.2f}"
        )
        print(optimizer_steps_line(chosen, results, args.steps))
        print(
            "no run wrote a checkpoint or a model (training.save_model: false; the baselines save_strategy "
            f"'no'); a run directory held at most {disk / 2**10:.1f} KiB (config, metrics), deleted after its run"
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
