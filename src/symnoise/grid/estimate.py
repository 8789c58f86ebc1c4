"""A stated, rough estimate of what each grid cell needs: GPUs and GPU-hours, from the model size and the data.

The assumptions, printed with every estimate (`ASSUMPTIONS`), are deliberately simple so a user can redo the
arithmetic:

* hardware: GPUs of 80 GB with 312 TFLOP/s of dense bf16 (A100 80GB), of which 40 % is achieved (MFU);
* training compute: 6 x parameters x tokens for full fine-tuning, 4 x for LoRA/QLoRA (no weight gradients of the
  frozen base), plus 2 x when activations are recomputed (gradient checkpointing); tokens = examples x epochs x
  mean tokens per example x views per example (``examples`` and ``mean_tokens`` of the dataset entry; a local file
  is counted; without ``mean_tokens`` the upper bound ``data.max_length`` is used), where each noisy view of an
  example counts its tokens again: the symmetric pair (SymNoise's default, or ``noise.symmetric`` with another
  noise method) doubles them, ``noise.draws`` K multiplies them by K (2K views for K pairs);
* memory: full fine-tuning with AdamW holds 16 bytes per parameter (bf16 weights and gradients, fp32 master weights
  and two moments) sharded over the GPUs (FSDP/ZeRO-3), with 80 % of each GPU usable for them; LoRA needs
  2 bytes per parameter, QLoRA 0.55, on one GPU;
* generation: 2 x parameters FLOPs per new token at 1 % utilisation (batched ``generate`` is memory-bound),
  400 new tokens per prompt on average (NEFTune-length answers) unless ``max_new_tokens`` is smaller.

Real times vary by a factor of two either way (interconnect, sequence packing, attention kernels).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from ..config import NoiseConfig
from .cells import Cell
from .sections import GridSpec
from .spec import Grid

GPU_MEMORY_GB = 80.0
GPU_PEAK_TFLOPS = 312.0
TRAIN_UTILISATION = 0.40
GENERATE_UTILISATION = 0.01
USABLE_MEMORY = 0.80
BYTES_PER_PARAM = {"full": 16.0, "lora": 2.0, "qlora": 0.55}
FLOPS_PER_PARAM_TOKEN = {"full": 6.0, "lora": 4.0, "qlora": 4.0}
RECOMPUTE_FLOPS = 2.0
NEW_TOKENS_PER_PROMPT = 400
ALPACA_EVAL_PROMPTS = 805

ASSUMPTIONS = (
    f"estimate: {GPU_MEMORY_GB:.0f} GB GPUs at {GPU_PEAK_TFLOPS:.0f} bf16 TFLOP/s, "
    f"{TRAIN_UTILISATION:.0%} used in training; 6/4 x params x tokens (full/LoRA) +2 x with "
    "recomputation, tokens x views per example (2 for SymNoise, K for noise.draws K); "
    "16/2/0.55 bytes per parameter (full/LoRA/QLoRA); "
    f"generation {NEW_TOKENS_PER_PROMPT} new tokens per prompt at {GENERATE_UTILISATION:.0%} use; "
    "a stated rough estimate (see symnoise.grid.estimate)"
)


@dataclass(frozen=True)
class CellEstimate:
    """What one cell is estimated to need; None where the grid does not say enough (the reason in ``missing``)."""

    cell: str
    params_b: float | None
    examples: int | None
    tokens: float | None
    gpus: int | None
    train_gpu_hours: float | None
    generate_gpu_hours: float | None
    missing: str | None = None

    @property
    def gpu_hours(self) -> float | None:
        if self.train_gpu_hours is None:
            return None
        return self.train_gpu_hours + (self.generate_gpu_hours or 0.0)


def params_from_name(name: str) -> float | None:
    """Billions of parameters read from a model name: "Llama-2-7b-hf" -> 7, "opt-6.7b" -> 6.7; None if absent."""
    match = re.search(r"(\d+(?:\.\d+)?)\s*b(?![a-z])", name.lower())
    return float(match.group(1)) if match else None


def count_examples(path: str) -> int | None:
    """Rows of a local JSON list or JSONL file; None when the path is not a readable local file."""
    file = Path(path)
    if not file.is_file():
        return None
    try:
        if file.suffix == ".jsonl":
            with file.open(encoding="utf-8") as handle:
                return sum(1 for line in handle if line.strip())
        data = json.loads(file.read_text(encoding="utf-8"))
        return len(data) if isinstance(data, list) else None
    except (OSError, ValueError):
        return None


def count_training_examples(data) -> int | None:
    """Examples a ``data`` section trains on, counted from its local files: ``data.path`` (within ``limit``), or
    each mixture source within its ``limit`` and taken ``weight`` times; None when a source cannot be counted
    (a hub dataset, an unreadable file)."""
    from ..data.mixture import specs_from_section, weighted_count

    total = 0
    for spec in specs_from_section(data)[0]:
        rows = count_examples(spec.path) if spec.path else None
        if rows is None:
            return None
        if spec.limit is not None:
            rows = min(rows, spec.limit)
        total += weighted_count(rows, spec.weight)
    return total


def views_per_example(noise: NoiseConfig) -> int:
    """How many times training runs each example per step: once per noisy view, i.e. ``noise.draws``, twice that
    for the symmetric pair ``X + eps`` / ``X - eps`` (``noise.symmetric``: on by default for the methods whose table
    row says so, SymNoise); 1 with a method without noise."""
    return noise.views


def _pretrain_params_b(spec: GridSpec) -> float:
    p = spec.pretrain
    return (12 * p.layers * p.hidden_size**2 + 2 * p.vocab_size * p.hidden_size) / 1e9


def _mode(cell: Cell) -> str:
    lora = cell.config.lora
    return "qlora" if lora.enabled and lora.quantize_4bit else ("lora" if lora.enabled else "full")


def estimate_cell(grid: Grid, cell: Cell) -> CellEstimate:
    """The stated estimate of one cell (see the module docstring for every assumption)."""
    spec, config = grid.spec, cell.config
    model = next((m for m in spec.axes.model if m.name == cell.model), None)
    dataset = next((d for d in spec.axes.dataset if d.name == cell.dataset), None)
    if spec.pretrain:
        params = _pretrain_params_b(spec)
    else:
        params = (model.params_b if model and model.params_b else None) or params_from_name(config.model.name)
    examples = dataset.examples if dataset and dataset.examples else None
    if examples is not None and config.data.limit is not None:
        examples = min(examples, config.data.limit)
    if examples is None:
        examples = count_training_examples(config.data)
    if examples is None and cell.dataset == "synthetic":
        from .evaluate import SYNTHETIC_SIZES

        examples = min(SYNTHETIC_SIZES[0], config.data.limit or SYNTHETIC_SIZES[0])
    mean_tokens = min(
        dataset.mean_tokens if dataset and dataset.mean_tokens else config.data.max_length,
        config.data.max_length,
    )
    missing = None if params else "model size unknown: set params_b on the model entry"
    if examples is None and config.training.max_steps <= 0:
        missing = missing or "number of examples unknown: set examples on the dataset entry"
    if missing:
        return CellEstimate(cell.id, params, examples, None, None, None, None, missing)
    if config.training.max_steps > 0:
        sequences = config.training.max_steps * config.training.effective_batch_size
    else:
        sequences = examples * config.training.epochs
    tokens = sequences * mean_tokens * views_per_example(config.noise)
    mode = _mode(cell)
    flops_per = FLOPS_PER_PARAM_TOKEN[mode] + (
        RECOMPUTE_FLOPS if config.training.gradient_checkpointing else 0.0
    )
    train_hours = flops_per * params * 1e9 * tokens / (GPU_PEAK_TFLOPS * 1e12 * TRAIN_UTILISATION) / 3600
    memory = BYTES_PER_PARAM[mode] * params  # GB, since params is in billions
    gpus = 1 if mode != "full" else max(1, math.ceil(memory / (GPU_MEMORY_GB * USABLE_MEMORY)))
    generate_hours = None
    if spec.evaluation.prompts:
        prompts = spec.evaluation.subset or ALPACA_EVAL_PROMPTS
        new = min(NEW_TOKENS_PER_PROMPT, spec.evaluation.decoding.max_new_tokens or NEW_TOKENS_PER_PROMPT)
        generate_hours = (
            2 * params * 1e9 * prompts * new / (GPU_PEAK_TFLOPS * 1e12 * GENERATE_UTILISATION) / 3600
        )
    return CellEstimate(cell.id, params, examples, tokens, gpus, train_hours, generate_hours)


def _number(value: float | None, spec: str) -> str:
    return "?" if value is None else format(value, spec)


def estimate_lines(grid: Grid) -> list[str]:
    """The estimate table of ``symnoise grid --check``: one line per cell, the assumptions and the total."""
    estimates = [estimate_cell(grid, cell) for cell in grid.cells]
    width = max(len(e.cell) for e in estimates)
    lines = [
        ASSUMPTIONS,
        f"  {'cell':<{width}}  {'params':>7}  {'examples':>8}  {'tokens':>8}  {'GPUs':>4}  {'train GPU-h':>11}  "
        f"{'generate GPU-h':>14}",
    ]
    for e in estimates:
        lines.append(
            f"  {e.cell:<{width}}  {_number(e.params_b, '6.3g')}B  {_number(e.examples, '8d')}  "
            f"{_number(e.tokens and e.tokens / 1e6, '7.1f')}M  {_number(e.gpus, '4d')}  "
            f"{_number(e.train_gpu_hours, '11.3g')}  "
            + (f"{_number(e.generate_gpu_hours, '14.3g')}" if grid.spec.evaluation.prompts else f"{'-':>14}")
            + (f"  ({e.missing})" if e.missing else "")
        )
    known = [e.gpu_hours for e in estimates if e.gpu_hours is not None]
    lines.append(f"  total: {sum(known):.1f} GPU-hours over {len(known)} of {len(estimates)} cells")
    return lines
