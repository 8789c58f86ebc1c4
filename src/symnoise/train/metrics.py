"""What a training run measures and writes besides the model: real tokens/s, padding, memory, MFU, and files."""

from __future__ import annotations

import csv
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..data.packing import real_token_count

# Dense bf16 peak TFLOP/s per GPU (vendor datasheets, without sparsity), matched by substring of the device name.
PEAK_BF16_TFLOPS = {
    "H200": 989.0, "H100 SXM": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 989.0, "GH200": 989.0,
    "A100": 312.0, "A10G": 70.0, "A10": 125.0, "L40S": 362.0, "L4": 121.0, "A6000": 155.0,
    "RTX 4090": 165.0, "RTX 3090": 71.0, "V100": 125.0, "B200": 2250.0, "MI300X": 1307.0,
}


def peak_flops(device_name: str) -> float | None:
    """Peak dense bf16 FLOP/s of a GPU from its name, or None when unknown."""
    for key, tflops in PEAK_BF16_TFLOPS.items():
        if key in device_name:
            return tflops * 1e12
    return None


class TokenCounter:
    """Counts real (non-padding) and total token positions of the batches each optimizer step consumes.

    It wraps ``trainer.get_batch_samples``, which fetches exactly one step's micro-batches, so the counts line up
    with the logged steps (a collator-level count would run ahead whenever the data loader prefetches). Real
    tokens are summed on the device and read only when a line is logged: no host-device sync per step.
    """

    def __init__(self, trainer: Any):
        self.real: torch.Tensor | int = 0
        self.total = 0
        original = trainer.get_batch_samples

        def get_batch_samples(*args: Any, **kwargs: Any) -> Any:
            batches, num_items = original(*args, **kwargs)
            for batch in batches:
                self.add(batch)
            return batches, num_items

        trainer.get_batch_samples = get_batch_samples

    def add(self, batch: dict) -> None:
        self.total += batch["input_ids"].numel()
        self.real = self.real + real_token_count(batch)


def peak_memory_gb(device: torch.device) -> float:
    """Peak accelerator memory allocated by torch on CUDA; peak resident memory of the process elsewhere."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**30 if sys.platform == "darwin" else rss / 2**20


class RunMetrics:
    """Adds throughput and memory to every training log line and appends each line to metrics.jsonl."""

    def __init__(self, run_dir: Path, counter: TokenCounter, device: torch.device, n_params: int, world_size: int):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.counter = counter
        self.device = device
        self.n_params = n_params
        self.world_size = world_size
        self.flops = peak_flops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
        self._last = (time.perf_counter(), 0, 0)

    def extend(self, logs: dict[str, float]) -> None:
        if "loss" not in logs:
            return
        now, real, total = time.perf_counter(), int(self.counter.real), self.counter.total
        last_time, last_real, last_total = self._last
        self._last = (now, real, total)
        seconds = max(now - last_time, 1e-9)
        tokens_per_s = (real - last_real) / seconds
        logs["tokens_per_s"] = round(tokens_per_s * self.world_size, 2)
        if total > last_total:
            logs["padding_fraction"] = round(1 - (real - last_real) / (total - last_total), 4)
        logs["peak_mem_gb"] = round(peak_memory_gb(self.device), 3)
        if self.flops:
            # 6 N FLOPs per token for forward + backward of a dense decoder (attention FLOPs left out).
            logs["mfu"] = round(6 * self.n_params * tokens_per_s / self.flops, 4)

    def write(self, logs: dict[str, Any], step: int, epoch: float | None) -> None:
        record = {"step": step, "epoch": epoch, **logs}
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


def jsonl_to_csv(jsonl: Path, csv_path: Path) -> None:
    """Write the JSONL metrics as a CSV with the union of their columns (blank where a row lacks one)."""
    rows = [json.loads(line) for line in jsonl.read_text(encoding="utf-8").splitlines() if line.strip()]
    columns = list(dict.fromkeys(key for row in rows for key in row))
    tmp = csv_path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, csv_path)


def write_json(path: Path, obj: Any) -> None:
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


MODEL_CARD = """---
library_name: transformers
base_model: {base_model}
tags:
- symnoise
- noisy-embeddings
- {method}
datasets:
- {dataset}
---

# {name}

{base_model} fine-tuned on {dataset} with [symnoise](https://pypi.org/project/symnoise/).

| | |
|---|---|
| noise method | `{method}` |
| alpha | {alpha} |
| symmetric pair (+eps / -eps) | {symmetric} |
| norm matched to uniform (/sqrt(3)) | {match} |
| length used in alpha/sqrt(L d) | {length_mode} |
| noised tokens | {region} |
| schedule | {schedule} |
| prompt template | `{template}` |
| max length | {max_length} |
| learning rate | {lr} |
| effective batch size | {batch} |
| epochs / steps | {epochs} / {steps} |
| LoRA | {lora} |
| final training loss | {final_loss} |

The noise is used only during training; the saved weights are an ordinary causal LM. Generate with the same
prompt template (`symnoise generate` reads it from `symnoise_run.json`).
"""


def model_card(config: Any, template: str, steps: int, final_loss: float | None) -> str:
    noise = config.noise
    return MODEL_CARD.format(
        base_model=config.model.name, name=Path(config.training.output_dir).name, method=noise.method,
        dataset=config.data.source_label, alpha=noise.alpha, symmetric=noise.symmetric, match=noise.match_uniform_norm,
        length_mode=noise.length_mode, region=noise.region, schedule=noise.schedule, template=template,
        max_length=config.data.max_length, lr=config.training.learning_rate,
        batch=config.training.effective_batch_size, epochs=config.training.epochs, steps=steps,
        lora=f"r={config.lora.r}, alpha={config.lora.alpha}" if config.lora.enabled else "no (full fine-tuning)",
        final_loss="n/a" if final_loss is None else f"{final_loss:.4f}",
    )
