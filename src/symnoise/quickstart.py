"""The built-in quickstart: the whole method on a laptop, with nothing to download.

It generates an instruction dataset of small exactly-checkable tasks (`symnoise.synthetic`), trains a
tokenizer on it and builds a small Llama-style model. A tiny model needs about 800 steps before it starts to solve
these tasks at all, so the base model first gets a short noise-free warm start on task text (`symnoise.warm_start`),
shared by all methods; it stops while the model is still learning fast. Then the real `symnoise train` recipe
continues from that base once per noise method, on examples the warm start never saw, so the steps in which the
model learns most are taken under each method's noise. Each model is scored on held-out task instances: exact-match accuracy of
greedy answers (overall, with its standard error, and per family), and the loss of the reference answers. Seeds
and the thread count are fixed, so every run on the same machine prints the same table.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .data import Example, tokenize_examples
from .data.packing import right_pad
from .evaluation.reference_loss import reference_loss
from .files import read_json, write_json_atomic, write_json_lines_atomic
from .generation import (
    DecodingSettings,
    Prompt,
    decode_output,
    generate_batch,
    load_model_and_tokenizer,
    prompt_token_ids,
)
from .layout import RunLayout
from .synthetic import (
    exact_match,
    family_of,
    make_task_examples,
    tiny_llama_for,
    tokenizer_corpus,
    train_tokenizer,
)
from .train import train
from .train.config import validate_config
from .warm_start import WarmStartPlan, warm_start

logger = logging.getLogger("symnoise.quickstart")

METHOD_ALPHAS = {"none": 0.0, "neftune": 5.0, "symnoise": 5.0}
# Tasks whose answer re-arranges or transforms the digits of the prompt at fixed offsets: the ones a 2-layer model
# learns from scratch within minutes on a CPU (tasks that need content-based copying, such as table lookups or
# list items, need induction heads that did not form in the budget). Measured choice; see `QuickstartSettings`.
QUICKSTART_FAMILIES = ("date_to_iso", "us_date_to_eu", "increment")
TEMPLATE = "alpaca"
PRETRAIN_SUMMARY = "pretrain_summary.json"  # beside the warm-started base model


@dataclass(frozen=True)
class QuickstartSettings:
    """Everything that decides the quickstart's result; the defaults fit about 5 minutes on 2 CPU cores.

    ``n_pretrain`` examples are used only for the warm start (one pass), ``n_train`` only for fine-tuning (one
    epoch: 250 steps per method) and ``n_eval`` only for scoring; all three are disjoint and spread evenly over
    ``families``. Measured with these defaults (2 layers, width 128, 2 threads): tasks that need content-based copying
    (table lookups, list items, JSON) stayed at 0-5% after 2000 steps, while the fixed-offset digit tasks reach
    30-80% after the warm start and the fine-tuning, leaving room for the methods to differ.
    """

    out_dir: Path = Path("runs/quickstart")
    methods: tuple[str, ...] = ("none", "neftune", "symnoise")
    families: tuple[str, ...] = QUICKSTART_FAMILIES
    n_pretrain: int = 25600
    pretrain_steps: int = 800
    pretrain_lr: float = 3e-3
    n_train: int = 8000
    n_eval: int = 600
    epochs: float = 1.0
    batch_size: int = 32
    learning_rate: float = 1e-3
    max_length: int = 128
    hidden_size: int = 128
    layers: int = 2
    heads: int = 4
    threads: int = 2
    seed: int = 0


@dataclass(frozen=True)
class MethodScore:
    method: str
    alpha: float
    exact_match: float
    eval_loss: float
    train_loss: float
    seconds: float
    per_family: dict[str, float] = field(default_factory=dict)
    hits: tuple[bool, ...] = ()  # exact match of each held-out instance, in the same order for every method


@dataclass(frozen=True)
class Difference:
    """Exact match of method ``b`` minus method ``a`` over the same held-out instances, in points, paired."""

    a: str
    b: str
    difference: float
    ci_low: float
    ci_high: float
    n: int

    @property
    def verdict(self) -> str:
        if self.ci_low <= 0 <= self.ci_high:
            return "no difference shown (the interval contains 0)"
        return f"{self.b} {'higher' if self.difference > 0 else 'lower'} on these instances"


def split_examples(settings: QuickstartSettings) -> tuple[list[Example], list[Example], list[Example]]:
    """Disjoint pretraining, fine-tuning and eval examples of ``settings.families``, each balanced over them."""
    train_pool, eval_pool = make_task_examples(
        settings.n_pretrain + settings.n_train,
        settings.n_eval,
        seed=settings.seed,
        families=settings.families,
    )
    return train_pool[: settings.n_pretrain], train_pool[settings.n_pretrain :], eval_pool


def write_alpaca_jsonl(path: Path, examples: list[Example]) -> None:
    write_json_lines_atomic(
        path, ({"instruction": e.instruction, "input": e.input, "output": e.output} for e in examples)
    )


def warm_start_plan(settings: QuickstartSettings) -> WarmStartPlan:
    """AdamW with linear warmup and decay over ``settings.pretrain_steps``."""
    warmup = max(1, settings.pretrain_steps // 30)

    def learning_rate(step: int) -> float:
        return settings.pretrain_lr * (
            min(1.0, (step + 1) / warmup) * max(0.05, 1 - step / settings.pretrain_steps)
        )

    return WarmStartPlan(settings.pretrain_steps, learning_rate, betas=(0.9, 0.98), weight_decay=0.0)


def shuffled_batches(dataset, settings: QuickstartSettings):
    """Endless right-padded batches of ``settings.batch_size`` examples, each pass over ``dataset`` in a new
    seeded order. The loss is on answer tokens only (the prompts are boilerplate and random digits, nothing worth
    predicting)."""
    generator = random.Random(settings.seed)
    order: list[int] = []
    while True:
        while len(order) < settings.batch_size:
            epoch = list(range(len(dataset)))
            generator.shuffle(epoch)
            order += epoch
        ids, mask, labels = right_pad([dataset[order.pop()] for _ in range(settings.batch_size)])
        yield {"input_ids": ids, "attention_mask": mask, "labels": labels}


def build_world(settings: QuickstartSettings) -> tuple[Path, Path, list[Example]]:
    """Write the fine-tuning set (JSONL) and the pretrained base model + tokenizer; return their paths and the
    eval set."""

    pretrain_examples, train_examples, eval_examples = split_examples(settings)
    train_path = settings.out_dir / "data" / "train.jsonl"
    write_alpaca_jsonl(train_path, train_examples)
    write_alpaca_jsonl(settings.out_dir / "data" / "eval.jsonl", eval_examples)
    # A few thousand examples give the same merges as all of them, in a fraction of the time.
    tokenizer = train_tokenizer(
        tokenizer_corpus((train_examples + pretrain_examples)[:4000]),
        vocab_size=1024,
        model_max_length=256,
        isolate_spaces=True,
    )
    model = tiny_llama_for(tokenizer, settings)
    started = time.perf_counter()
    dataset = tokenize_examples(pretrain_examples, tokenizer, TEMPLATE, settings.max_length)
    losses = warm_start(model, shuffled_batches(dataset, settings), warm_start_plan(settings), logger.info)
    base_dir = settings.out_dir / "base"
    model.save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    tail = losses[-20:]
    write_json_atomic(
        base_dir / PRETRAIN_SUMMARY,
        {
            "steps": len(losses),
            "examples": len(pretrain_examples),
            "seconds": time.perf_counter() - started,
            "final_loss": sum(tail) / len(tail) if tail else None,
        },
    )
    return train_path, base_dir, eval_examples


def train_method(settings: QuickstartSettings, method: str, train_path: Path, base_dir: Path) -> Path:
    """Fine-tune the base model with one noise method through the real `symnoise train` recipe."""
    run_dir = settings.out_dir / method
    steps = math.ceil(settings.n_train / settings.batch_size * settings.epochs)
    logging_steps = max(1, min(10, steps))  # at least one logged loss, even for tiny test runs
    config = validate_config(
        {
            "model": {"name": str(base_dir), "dtype": "float32"},
            "data": {"path": str(train_path), "format": "alpaca", "max_length": settings.max_length},
            "noise": {"method": method, "alpha": METHOD_ALPHAS[method], "seed": settings.seed},
            "training": {
                "output_dir": str(run_dir),
                "epochs": settings.epochs,
                "learning_rate": settings.learning_rate,
                "per_device_batch_size": settings.batch_size,
                "effective_batch_size": settings.batch_size,
                "warmup_ratio": 0.03,
                "seed": settings.seed,
                "save_steps": 10**6,
                "logging_steps": logging_steps,
                "report_to": [],
                "device": "cpu",
            },
        },
        source=f"quickstart/{method}",
    )
    train(config)
    return run_dir


def score(run_dir: Path, eval_examples: list[Example]) -> tuple[list[bool], float]:
    """Exact match of each held-out example's greedy answer (no repetition penalty: answers like dates repeat
    tokens), in order, and the mean per-token loss of the reference answers."""
    model, tokenizer = load_model_and_tokenizer(run_dir, device="cpu", dtype="float32")
    rows = prompt_token_ids(
        tokenizer, [Prompt(e.instruction, "quickstart", e.input) for e in eval_examples], TEMPLATE
    )
    decoding = DecodingSettings(max_length=192, max_new_tokens=48, repetition_penalty=1.0)
    hits: list[bool] = []
    for start in range(0, len(rows), 64):
        outputs = generate_batch(model, tokenizer, rows[start : start + 64], decoding)
        for ids, example in zip(outputs, eval_examples[start : start + 64], strict=True):
            hits.append(exact_match(decode_output(tokenizer, ids), example.output))
    return hits, reference_loss(model, tokenizer, eval_examples, TEMPLATE, 256, batch_size=64)["loss"]


def per_family(hits: list[bool], examples: list[Example]) -> dict[str, float]:
    """Exact match per task family."""
    found: dict[str, list[bool]] = defaultdict(list)
    for hit, example in zip(hits, examples, strict=True):
        found[family_of(example)].append(hit)
    return {name: sum(values) / len(values) for name, values in sorted(found.items())}


def run_quickstart(settings: QuickstartSettings = QuickstartSettings()) -> list[MethodScore]:
    """Build the world, fine-tune and score every method; the thread count is pinned so results repeat."""
    unknown = [m for m in settings.methods if m not in METHOD_ALPHAS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {', '.join(METHOD_ALPHAS)}")
    torch.set_num_threads(settings.threads)
    train_path, base_dir, eval_examples = build_world(settings)
    scores = []
    for method in settings.methods:
        started = time.perf_counter()
        run_dir = train_method(settings, method, train_path, base_dir)
        seconds = time.perf_counter() - started
        summary = read_json(RunLayout(run_dir).summary)
        hits, eval_loss = score(run_dir, eval_examples)
        final_loss = summary["final_loss"]
        scores.append(
            MethodScore(
                method,
                METHOD_ALPHAS[method],
                sum(hits) / len(hits),
                eval_loss,
                math.nan if final_loss is None else final_loss,
                seconds,
                per_family(hits, eval_examples),
                tuple(hits),
            )
        )
    return scores


def differences(scores: list[MethodScore]) -> list[Difference]:
    """Every noisy method against no noise, and SymNoise against NEFTune: the paired difference in exact match
    over the same held-out instances, with its 95% t-interval (`symnoise.evaluation.paired.paired_difference`)."""
    from .evaluation.paired import paired_difference

    by_method = {s.method: s for s in scores}
    pairs = [("none", m) for m in by_method if m != "none"] + [("neftune", "symnoise")]
    found = []
    for a, b in pairs:
        if a in by_method and b in by_method and len(by_method[a].hits) > 1:
            d = paired_difference(
                [100.0 * h for h in by_method[a].hits], [100.0 * h for h in by_method[b].hits]
            )
            if d.ci_low is None:  # every instance agrees: the difference is exactly 0
                found.append(Difference(a, b, d.difference, d.difference, d.difference, d.n))
            else:
                found.append(Difference(a, b, d.difference, d.ci_low, d.ci_high, d.n))
    return found


def format_differences(found: list[Difference]) -> str:
    """The comparisons, and what their intervals do and do not cover."""
    lines = [
        "| comparison | exact match difference (points) | 95% interval | |",
        "|---|---|---|---|",
        *(
            f"| {d.b} - {d.a} | {d.difference:+.1f} | [{d.ci_low:+.1f}, {d.ci_high:+.1f}] | {d.verdict} |"
            for d in found
        ),
    ]
    return "\n".join(lines) + "\n\n" + CAVEAT


CAVEAT = (
    "Each interval is paired over the same held-out instances and covers only which instances were drawn. It does "
    "not cover the training seed or the machine: the run repeats exactly on one machine, but another CPU's "
    "arithmetic moves each method's exact match by several points (see the README), so a gap of a few points "
    "between two methods here is not a result about the methods."
)


def describe(settings: QuickstartSettings) -> str:
    """What the table measures, in one paragraph, so results.md stands alone."""
    return (
        f"Quickstart: task families {', '.join(settings.families)}. A {settings.layers}-layer, "
        f"{settings.hidden_size}-wide Llama-style model, warm-started without noise ({settings.pretrain_steps} "
        f"steps of answer loss on {settings.n_pretrain} examples), then fine-tuned per method with `symnoise train` "
        f"({settings.epochs:g} epoch(s) of {settings.n_train} other examples, batch {settings.batch_size}, "
        f"lr {settings.learning_rate:g}); exact match and answer loss on {settings.n_eval} held-out instances, "
        f"greedy decoding. Seed {settings.seed}, {settings.threads} torch thread(s)."
    )


def format_table(scores: list[MethodScore], n_eval: int) -> str:
    """A Markdown table: one row per method, overall held-out exact match with its binomial standard error,
    per-family exact match, losses and train time."""
    families = list(scores[0].per_family) if scores else []
    header = [
        "method",
        "alpha",
        f"exact match (n={n_eval})",
        "± s.e.",
        *families,
        "answer loss",
        "last train loss",
        "train s",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s in scores:
        error = math.sqrt(s.exact_match * (1 - s.exact_match) / n_eval)
        cells = [
            s.method,
            f"{s.alpha:g}",
            f"{100 * s.exact_match:.1f}%",
            f"{100 * error:.1f}",
            *(f"{100 * s.per_family.get(name, math.nan):.0f}%" for name in families),
            f"{s.eval_loss:.3f}",
            f"{s.train_loss:.3f}",
            f"{s.seconds:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
