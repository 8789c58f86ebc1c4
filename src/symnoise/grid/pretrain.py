"""A brief from-scratch pretraining of a small Llama-style model, so a grid can run with nothing downloaded.

The text is the grid's own: instruction records read as plain text (instruction, input and output, no prompt
template), or the synthetic task set when the file is missing. A byte-level BPE tokenizer is trained on that
text (plus the prompt templates' boilerplate, so "### Response:" is a few tokens), the text is packed into
blocks separated by EOS, and the warm-start loop (`symnoise.warm_start`) trains next-token prediction for a fixed
number of steps.
Training runs on the GPU when there is one (float32; the model is small), else on the CPU. The model and
tokenizer are written to a staging folder and renamed into place when complete.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

from ..data import Example
from ..files import read_placed_json_rows, write_dir_atomic
from ..synthetic import tiny_llama_for, tokenizer_corpus, train_tokenizer
from ..warm_start import WarmStartPlan, warm_start
from .sections import GridError, PretrainSection

MAX_POSITIONS = 1024


def read_records(path: str | Path) -> list[Example]:
    """Instruction records (instruction, input?, output) of a JSON list or JSONL file."""
    records = []
    for place, row in read_placed_json_rows(path, GridError, what="instruction records"):
        if not isinstance(row, dict):
            raise GridError(f"{path}: {place}: expected a JSON object, got {type(row).__name__}")
        fields = (
            str(row.get("instruction", "")),
            str(row.get("input", "") or ""),
            str(row.get("output", "")),
        )
        records.append(Example(*fields, f"{path}:{place}"))
    return records


def pretraining_examples(section: PretrainSection, synthetic_train: Path) -> tuple[list[Example], str]:
    """The records to pretrain on and a description of where they came from."""
    if section.text and Path(section.text).is_file():
        records = read_records(section.text)[section.skip_first :]
        return (
            records,
            f"{section.text} (records {section.skip_first}..{section.skip_first + len(records) - 1})",
        )
    return read_records(synthetic_train), f"synthetic task set ({synthetic_train})"


def plain_text(example: Example) -> str:
    return "\n".join(part for part in (example.instruction, example.input, example.output) if part)


def pack_blocks(token_lists: list[list[int]], eos_id: int, block_size: int):
    """All documents joined with EOS after each, cut into ``block_size`` blocks (the tail shorter than a block
    is dropped); a LongTensor of shape (blocks, block_size)."""
    import torch

    stream = [token for tokens in token_lists for token in [*tokens, eos_id]]
    n_blocks = len(stream) // block_size
    if n_blocks == 0:
        raise ValueError(
            f"the pretraining text has {len(stream)} tokens, fewer than one block of {block_size}"
        )
    return torch.tensor(stream[: n_blocks * block_size]).view(n_blocks, block_size)


def learning_rate(step: int, section: PretrainSection) -> float:
    """Linear warmup, then cosine decay to 10 % of the peak."""
    if step < section.warmup_steps:
        return section.learning_rate * (step + 1) / section.warmup_steps
    progress = (step - section.warmup_steps) / max(1, section.steps - section.warmup_steps)
    return section.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def pretrain_device():
    """Where the pretraining runs: the CUDA GPU when there is one, else the CPU."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def block_batches(blocks, section: PretrainSection):
    """Endless batches of ``section.batch_size`` blocks drawn at random (seeded, on the CPU), as next-token
    targets of themselves."""
    import torch

    generator = torch.Generator().manual_seed(section.seed)
    while True:
        batch = blocks[torch.randint(len(blocks), (section.batch_size,), generator=generator)]
        yield {"input_ids": batch, "labels": batch}


def pretrain(section: PretrainSection, out_dir: Path, synthetic_train: Path, log=print) -> dict:
    """Train tokenizer and model, write them to ``out_dir`` (atomically) and return a summary."""

    started = time.perf_counter()
    examples, source = pretraining_examples(section, synthetic_train)
    random.Random(section.seed).shuffle(examples)
    texts = [plain_text(e) for e in examples]
    tokenizer = train_tokenizer(
        texts + tokenizer_corpus(examples[:200]),
        vocab_size=section.vocab_size,
        model_max_length=MAX_POSITIONS,
    )
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    blocks = pack_blocks(ids, tokenizer.eos_token_id, section.block_size)
    model = tiny_llama_for(tokenizer, section)
    device = pretrain_device()  # the model is initialised on the CPU: the same weights whatever the device
    model.to(device)
    log(
        f"pretraining {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters on {len(blocks)} blocks "
        f"of {section.block_size} tokens from {source}, on {device.type}"
    )
    plan = WarmStartPlan(
        steps=section.steps,
        learning_rate=lambda step: learning_rate(step, section),
        betas=(0.9, 0.95),
        weight_decay=0.1,
        log_every=25,
    )
    losses = warm_start(model, block_batches(blocks, section), plan, log)

    def save(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    write_dir_atomic(out_dir, save)
    tail = losses[-10:]
    return {
        "source": source,
        "records": len(examples),
        "blocks": len(blocks),
        "tokens_seen": section.steps * section.batch_size * section.block_size,
        "first_loss": losses[0],
        "final_loss": sum(tail) / len(tail),
        "seconds": time.perf_counter() - started,
    }
