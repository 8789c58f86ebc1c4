"""What a training run measures and writes besides the model: real tokens/s, padding, memory, MFU, and files."""

from __future__ import annotations

import csv
import logging
import math
import re
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..data.file_kinds import FILE_SUFFIXES
from ..data.packing import real_token_count
from ..files import append_json_lines, read_json_lines, write_atomic
from ..layout import RUN_INFO, RunLayout
from ..methods import METHOD_TABLE
from .base_license import License, card_license

logger = logging.getLogger(__name__)

# Dense (no 2:4 sparsity) bf16 tensor-core peak TFLOP/s per GPU from the vendors' datasheets, matched in this order
# against the name torch reports (whole words, so "L4" is not "L40" and "H200" is not "GH200"). V100 has no bf16:
# its fp16 peak. An unknown name gives no MFU rather than a wrong one.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    (r"\bGH200\b", 989.4),
    (r"\bH200\b.*\bNVL\b", 835.5),
    (r"\bH200\b", 989.4),
    (r"\bH100\b.*\bNVL\b", 835.5),
    (r"\bH100\b.*\bPCIe\b", 756.5),
    (r"\bH100\b", 989.4),  # SXM ("NVIDIA H100 80GB HBM3")
    (r"\bH800\b", 989.4),
    (r"\bH20\b", 148.0),
    (r"\bB200\b", 2250.0),
    (r"\bA100\b", 312.0),
    (r"\bA800\b", 312.0),
    (r"\bA10G\b", 70.0),
    (r"\bA10\b", 125.0),
    (r"\bL40S\b", 362.05),
    (r"\bL40\b", 181.05),
    (r"\bL4\b", 121.0),
    (r"\bRTX 6000 Ada\b", 364.2),
    (r"\bA6000\b", 154.8),
    (r"\bRTX 4090\b", 165.2),
    (r"\bRTX 3090\b", 71.0),
    (r"\bV100\b", 125.0),
    (r"\bMI300X\b", 1307.4),
    (r"\bMI325X\b", 1307.4),
)


def peak_flops(device_name: str) -> float | None:
    """Peak dense bf16 FLOP/s of a GPU from its name, or None when unknown."""
    for pattern, tflops in PEAK_BF16_TFLOPS:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            return tflops * 1e12
    return None


def logical_numel(param: torch.Tensor) -> int:
    """Elements of the weight a parameter stands for, whatever its storage.

    A bitsandbytes 4-bit weight is stored packed (two values per byte, or more per element of a wider
    ``quant_storage``); its quant state keeps the real shape. A DeepSpeed ZeRO-3 partitioned parameter is empty on
    each rank; ``ds_numel`` is its full size. An FSDP2 DTensor's ``numel()`` is already the global size.
    """
    shape = getattr(getattr(param, "quant_state", None), "shape", None)
    if shape is not None:
        return math.prod(shape)
    if hasattr(param, "ds_numel"):
        return int(param.ds_numel)
    return param.numel()


def flop_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """``(N, N_trained)``: the parameters every token goes through in matrix products, and how many of them are
    trained. The input embedding table is left out (a lookup, no FLOPs) unless the LM head shares it; parameters
    shared between modules count once."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    lookup_only = getattr(embeddings, "weight", None)
    if output is not None and getattr(output, "weight", None) is lookup_only:
        lookup_only = None  # tied: the table is also the LM head's matrix
    total = trained = 0
    for param in model.parameters():  # parameters() yields a shared tensor once
        if param is lookup_only:
            continue
        count = logical_numel(param)
        total += count
        trained += count if param.requires_grad else 0
    return total, trained


def training_flops_per_token(n_params: int, n_trained: int) -> float:
    """FLOPs of one token's forward and backward pass: ``2 N + 2 N + 2 N_trained``.

    Forward: 2 FLOPs (multiply, add) per parameter. Backward: 2 per parameter for the gradient of the activations,
    which must flow through frozen layers too to reach the trained ones, and 2 per trained parameter for the weight
    gradient. Full fine-tuning: 6 N. LoRA / a frozen base: about 4 N (the adapters add 6 per adapter parameter).
    Attention scores (``QK^T``, ``AV``) and recomputation under activation checkpointing are left out, as in the
    usual MFU definition.
    """
    return 4.0 * n_params + 2.0 * n_trained


class TokenCounter:
    """Counts real (non-padding) and total token positions of the batches each optimizer step consumes.

    The trainer hands it each batch from ``Trainer.get_batch_samples``, which fetches exactly one step's
    micro-batches (see `symnoise.train.trainer.RecipeTrainer`), so the counts line up with the logged steps (a
    collator-level count would run ahead whenever the data loader prefetches). Real tokens are summed on the
    device and read only when a line is logged: no host-device sync per step.
    """

    def __init__(self, trainer: Any):
        self.real: torch.Tensor | int = 0
        self.total = 0
        self._trainer = trainer

    def add(self, batch: dict) -> None:
        self.total += batch["input_ids"].numel()
        self.real = self.real + real_token_count(batch)

    def pair_copy_positions(self) -> int:
        """Positions the SymNoise pair added to the model's forwards so far (0 without a symmetric pair)."""
        from ..attach import get_handle

        handle = get_handle(self._trainer.model)
        return handle.pair_copy_positions if handle is not None else 0


def peak_memory_gb(device: torch.device) -> float:
    """Peak accelerator memory allocated by torch on CUDA; peak resident memory of the process elsewhere."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**30 if sys.platform == "darwin" else rss / 2**20


class RunMetrics:
    """Adds throughput, memory and MFU to every training log line and appends each line to metrics.jsonl.

    ``tokens_per_s``: real (non-padding) tokens of the caller's batches per second, over all ranks. On a GPU in the
    peak table, per GPU, with ``F`` = `training_flops_per_token` (6 N for full fine-tuning, 4 N + 2 N_trained for
    LoRA):

    * ``mfu`` (model MFU): ``F x real tokens/s / peak``, the useful work: what the caller's tokens cost;
    * ``hardware_mfu``: ``F x processed tokens/s / peak``, where processed tokens are every position the model
      ran, padding and packing filler included, and the SymNoise ``X - eps`` copy (twice the tokens). It says how
      busy the GPU is; ``mfu`` says how much of that is the caller's tokens.
    """

    def __init__(
        self,
        run_dir: Path,
        counter: TokenCounter,
        device: torch.device,
        n_params: int,
        world_size: int,
        n_trained: int | None = None,
    ):
        self.path = RunLayout(run_dir).metrics
        self.counter = counter
        self.device = device
        self.n_params = n_params
        self.world_size = world_size
        self.n_trained = n_params if n_trained is None else n_trained
        self.flops_per_token = training_flops_per_token(n_params, self.n_trained)
        self.flops = None
        if device.type == "cuda":
            name = torch.cuda.get_device_name(device)
            self.flops = peak_flops(name)
            logger.info(
                "MFU: %.4g FLOPs per token (N = %d, trained %d), %s",
                self.flops_per_token,
                n_params,
                self.n_trained,
                f"peak {self.flops / 1e12:g} TFLOP/s ({name})"
                if self.flops
                else f"not logged: {name!r} is not in the peak table",
            )
        self._last = (time.perf_counter(), 0, 0, 0)

    def extend(self, logs: dict[str, float]) -> None:
        if "loss" not in logs:
            return
        now, real, total = time.perf_counter(), int(self.counter.real), self.counter.total
        copies = self.counter.pair_copy_positions()
        last_time, last_real, last_total, last_copies = self._last
        self._last = (now, real, total, copies)
        seconds = max(now - last_time, 1e-9)
        tokens_per_s = (real - last_real) / seconds
        # A new attachment (another train() call) restarts its count.
        processed_per_s = (total - last_total + max(copies - last_copies, 0)) / seconds
        logs["tokens_per_s"] = round(tokens_per_s * self.world_size, 2)
        logs["processed_tokens_per_s"] = round(processed_per_s * self.world_size, 2)
        if total > last_total:
            logs["padding_fraction"] = round(1 - (real - last_real) / (total - last_total), 4)
        logs["peak_mem_gb"] = round(peak_memory_gb(self.device), 3)
        if self.flops:
            logs["mfu"] = round(self.flops_per_token * tokens_per_s / self.flops, 4)
            logs["hardware_mfu"] = round(self.flops_per_token * processed_per_s / self.flops, 4)

    def write(self, logs: dict[str, Any], step: int, epoch: float | None) -> None:
        append_json_lines(self.path, [{"step": step, "epoch": epoch, **logs}], durable=False)


def jsonl_to_csv(jsonl: Path, csv_path: Path) -> None:
    """Write the JSONL metrics as a CSV with the union of their columns (blank where a row lacks one).

    A line that is not a JSON object (a torn last line left by a kill) is left out: the CSV is a convenience
    copy, and it must never fail a run whose model is already written.
    """
    rows = [row for row in read_json_lines(jsonl, skip_bad=True) if isinstance(row, dict)]
    columns = list(dict.fromkeys(key for row in rows for key in row))

    def write_csv(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)

    write_atomic(csv_path, write_csv)


MODEL_CARD = """---
{metadata}---

# {name}

{config.model.name} fine-tuned on {datasets} with symnoise {version}: noisy-embedding instruction tuning
(`{noise.method}`, alpha {noise.alpha}){lora_sentence}.

| | |
|---|---|
| base model | {config.model.name} |
| licence of the base model | {license} |
| training data | {datasets} |
| noise method | `{noise.method}` |
| alpha | {noise.alpha} |
| symmetric pair (+eps / -eps) | {noise.symmetric} |
| norm matched to uniform (/sqrt(3)) | {noise.match_uniform_norm} |
| length used in alpha/sqrt(L d) | {noise.length_mode} |
| noised tokens | {noise.region} |
| schedule | {noise.schedule} |
| prompt template | `{template}` |
| max length | {config.data.max_length} |
| learning rate | {config.training.learning_rate} |
| effective batch size | {config.training.effective_batch_size} |
| trained | {steps} optimizer steps, {epochs} epochs |
| LoRA | {lora} |
| final training loss | {final_loss} |

The noise is used only during training; the saved weights are an ordinary {kind}. Generate with the same
prompt template (`symnoise generate` reads it from `{run_info}`).
"""

UNKNOWN_LICENSE = (
    "unknown (the base model's card states none, or could not be read; set model.license to state it)"
)


def is_hub_dataset(path: str) -> bool:
    """Whether a data path names a hub dataset (``tatsu-lab/alpaca``) rather than a local file or folder."""
    return (
        not Path(path).exists() and not path.endswith(FILE_SUFFIXES) and not path.startswith((".", "/", "~"))
    )


def data_paths(config: Any) -> list[str]:
    """Every training data source: ``data.path``, or each entry of a ``data.datasets`` mixture."""
    datasets = getattr(config.data, "datasets", None)
    return [entry.path for entry in datasets] if datasets else [config.data.path]


def _dataset_label(path: str) -> str:
    return path if is_hub_dataset(path) else f"a local file ({Path(path).name})"


def card_tag(method: str) -> str | None:
    """The hub tag of a noise method (`symnoise.methods`; ``NoiseConfig`` has resolved aliases), or None for no
    noise or an unknown name."""
    entry = METHOD_TABLE.get(method)
    return entry.card_tag if entry is not None else None


def card_metadata(config: Any, license: License | None = None) -> str:
    """The YAML header the hub reads: library, base model, licence (when known), tags (each once), hub datasets."""
    tags = list(
        dict.fromkeys(
            [
                "symnoise",
                "noisy-embeddings",
                card_tag(config.noise.method),
                "lora" if config.lora.enabled else None,
                "text-generation",
            ]
        )
    )
    lines = [
        f"library_name: {'peft' if config.lora.enabled else 'transformers'}",
        f"base_model: {config.model.name}",
    ]
    if license is not None:
        lines += license.metadata_lines()
    lines.append("pipeline_tag: text-generation")
    lines += ["tags:"] + [f"- {tag}" for tag in tags if tag]
    hub_datasets = [path for path in data_paths(config) if is_hub_dataset(path)]
    if hub_datasets:
        lines += ["datasets:"] + [f"- {path}" for path in hub_datasets]
    return "\n".join(lines) + "\n"


def model_card(
    config: Any,
    template: str,
    steps: int,
    final_loss: float | None,
    epochs: float | None = None,
    base_license: License | None = None,
) -> str:
    """The run's README.md: what was trained, on what, how, and for how long (the steps and epochs actually
    trained, which ``max_steps`` can make fewer than ``training.epochs``).

    ``base_license``: the licence the base model's card states (`base_license.base_model_license`); the card
    states it, else ``model.license``, else that the licence is unknown (`base_license.card_license`)."""
    from .. import __version__

    noise, lora = config.noise, config.lora
    license = card_license(getattr(config.model, "license", None), base_license)
    return MODEL_CARD.format(
        config=config,
        noise=noise,
        metadata=card_metadata(config, license),
        run_info=RUN_INFO,
        name=Path(config.training.output_dir).name,
        version=__version__,
        license=UNKNOWN_LICENSE if license is None else license.label(),
        datasets=" + ".join(_dataset_label(path) for path in data_paths(config)),
        lora_sentence=", LoRA adapter" if lora.enabled else "",
        template=template,
        steps=steps,
        epochs="n/a" if epochs is None else f"{epochs:.2f}",
        lora=(
            f"r={lora.r}, alpha={lora.alpha}, dropout={lora.dropout}, modules={lora.target_modules}"
            + (", 4-bit base (QLoRA)" if lora.quantize_4bit else "")
        )
        if lora.enabled
        else "no (full fine-tuning)",
        kind="LoRA adapter for the base model" if lora.enabled else "causal LM",
        final_loss="n/a" if final_loss is None else f"{final_loss:.4f}",
    )
