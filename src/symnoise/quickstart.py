"""The built-in quickstart: the whole method on a laptop, with nothing to download.

It generates an instruction dataset of small exactly-checkable tasks (`symnoise.synthetic`), trains a
tokenizer on it, builds a small Llama-style model, then runs the real `symnoise train` recipe once per noise
method from the same initial weights and scores each model on held-out task instances: exact-match accuracy
of greedy answers, and the loss of the reference answers. Seeds are fixed, so every run prints the same table.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .data import Example, tokenize_examples
from .generation import DecodingSettings, Prompt, decode_output, generate_batch, prompt_token_ids
from .synthetic import exact_match, make_task_examples, tiny_llama_config, tokenizer_corpus, train_tokenizer
from .train import train
from .train.config import validate_config

METHOD_ALPHAS = {"none": 0.0, "neftune": 5.0, "symnoise": 5.0}


@dataclass(frozen=True)
class QuickstartSettings:
    out_dir: Path = Path("runs/quickstart")
    methods: tuple[str, ...] = ("none", "neftune", "symnoise")
    n_train: int = 2200
    n_eval: int = 220
    epochs: float = 4.0
    batch_size: int = 32
    learning_rate: float = 2e-3
    hidden_size: int = 128
    layers: int = 3
    seed: int = 0


@dataclass(frozen=True)
class MethodScore:
    method: str
    alpha: float
    exact_match: float
    eval_loss: float
    train_loss: float
    seconds: float


def build_world(settings: QuickstartSettings) -> tuple[Path, Path, list[Example]]:
    """Write the train set (JSONL) and the initial model + tokenizer; return their paths and the eval set."""
    train_examples, eval_examples = make_task_examples(settings.n_train, settings.n_eval, seed=settings.seed)
    data_dir = settings.out_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    train_path = data_dir / "train.jsonl"
    with train_path.open("w", encoding="utf-8") as handle:
        for example in train_examples:
            handle.write(json.dumps({"instruction": example.instruction, "input": example.input,
                                     "output": example.output}) + "\n")
    tokenizer = train_tokenizer(tokenizer_corpus(train_examples), vocab_size=1024, model_max_length=256)
    from transformers import LlamaForCausalLM

    torch.manual_seed(settings.seed)
    config = tiny_llama_config(len(tokenizer), hidden_size=settings.hidden_size, layers=settings.layers,
                               max_position_embeddings=256)
    base_dir = settings.out_dir / "base"
    LlamaForCausalLM(config).save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    return train_path, base_dir, eval_examples


def train_method(settings: QuickstartSettings, method: str, train_path: Path, base_dir: Path) -> Path:
    run_dir = settings.out_dir / method
    config = validate_config({
        "model": {"name": str(base_dir), "dtype": "float32"},
        "data": {"path": str(train_path), "format": "alpaca", "max_length": 128},
        "noise": {"method": method, "alpha": METHOD_ALPHAS[method], "seed": settings.seed},
        "training": {"output_dir": str(run_dir), "epochs": settings.epochs, "learning_rate": settings.learning_rate,
                     "per_device_batch_size": settings.batch_size, "effective_batch_size": settings.batch_size,
                     "warmup_ratio": 0.03, "seed": settings.seed, "save_steps": 10**6, "logging_steps": 20,
                     "report_to": [], "device": "cpu"},
    }, source=f"quickstart/{method}")
    train(config)
    return run_dir


def score(run_dir: Path, eval_examples: list[Example]) -> tuple[float, float]:
    """Exact-match accuracy (greedy, no repetition penalty: answers like sorted digits repeat tokens) and the mean
    per-token loss of the reference answers, on the held-out examples."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    model = AutoModelForCausalLM.from_pretrained(run_dir).eval()
    prompts = [Prompt(e.instruction, "quickstart", e.input) for e in eval_examples]
    rows = prompt_token_ids(tokenizer, prompts, "alpaca")
    settings = DecodingSettings(max_length=192, max_new_tokens=48, repetition_penalty=1.0)
    correct = 0
    for start in range(0, len(rows), 64):
        batch = rows[start:start + 64]
        outputs = generate_batch(model, tokenizer, batch, settings)
        for ids, example in zip(outputs, eval_examples[start:start + 64], strict=True):
            correct += exact_match(decode_output(tokenizer, ids), example.output)
    dataset = tokenize_examples(eval_examples, tokenizer, "alpaca", 128)
    total, count = 0.0, 0
    with torch.no_grad():
        for item in dataset:
            ids = torch.tensor([item["input_ids"]])
            labels = torch.tensor([item["labels"]])
            n = int((labels[:, 1:] != -100).sum())
            total += model(input_ids=ids, labels=labels).loss.item() * n
            count += n
    return correct / len(eval_examples), total / max(count, 1)


def run_quickstart(settings: QuickstartSettings = QuickstartSettings()) -> list[MethodScore]:
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    train_path, base_dir, eval_examples = build_world(settings)
    scores = []
    for method in settings.methods:
        started = time.perf_counter()
        run_dir = train_method(settings, method, train_path, base_dir)
        seconds = time.perf_counter() - started
        summary = json.loads((run_dir / "train_summary.json").read_text())
        accuracy, eval_loss = score(run_dir, eval_examples)
        scores.append(MethodScore(method, METHOD_ALPHAS[method], accuracy, eval_loss,
                                  summary["final_loss"] or math.nan, seconds))
    return scores


def format_table(scores: list[MethodScore], n_eval: int) -> str:
    lines = [f"| method | alpha | held-out exact match (n={n_eval}) | held-out answer loss | last train loss | train s |",
             "|---|---|---|---|---|---|"]
    for s in scores:
        lines.append(f"| {s.method} | {s.alpha:g} | {100 * s.exact_match:.1f}% | {s.eval_loss:.3f} | "
                     f"{s.train_loss:.3f} | {s.seconds:.0f} |")
    return "\n".join(lines)
