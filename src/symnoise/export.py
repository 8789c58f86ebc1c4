"""Turn a LoRA run into one ordinary model: base weights with the adapter merged in, saved as safetensors.

A LoRA run directory holds only the adapter; serving stacks that load a plain causal LM (transformers'
``from_pretrained``, vLLM, llama.cpp converters) need the merged weights. :func:`merge_lora` loads the base model
named in the adapter config (unquantised, also for a QLoRA run), merges the adapter, and writes the model, the
tokenizer, the run's ``symnoise_run.json`` (so ``symnoise generate`` finds the template) and its model card. The
result is written to a staging folder and renamed into place, so an interrupted export never leaves a folder
that looks complete.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .dtypes import check_dtype
from .files import read_json, write_dir_atomic
from .layout import CONFIG_FILE, DATA_REPORT, FINAL_WEIGHTS, MODEL_CARD, RUN_INFO, TRAIN_SUMMARY, RunLayout

ADAPTER_CONFIG = "adapter_config.json"
RUN_FILES = (RUN_INFO, CONFIG_FILE, DATA_REPORT, TRAIN_SUMMARY)
# The weights of a full fine-tune (a LoRA run's adapter weights are the other final weights).
FULL_MODEL_WEIGHTS = tuple(name for name in FINAL_WEIGHTS if not name.startswith("adapter_"))


class ExportError(ValueError):
    """A run directory or destination that cannot be exported as asked; the message says why."""


def is_lora_run(run_dir: str | Path) -> bool:
    return (Path(run_dir) / ADAPTER_CONFIG).is_file()


def base_model_of(run_dir: str | Path) -> str:
    config = read_json(Path(run_dir) / ADAPTER_CONFIG, error=ExportError)
    return config.get("base_model_name_or_path") or "(unknown)"


def check_export(run_dir: str | Path, out_dir: str | Path, overwrite: bool = False) -> None:
    """Refuse, before loading anything, a run that is not a LoRA run or a destination that holds files."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if not run_dir.is_dir():
        raise ExportError(f"{run_dir}: no such run directory")
    if not is_lora_run(run_dir):
        if any((run_dir / name).is_file() for name in FULL_MODEL_WEIGHTS):
            raise ExportError(
                f"{run_dir} is a full fine-tune: the directory is already a complete model that "
                "transformers and vLLM load as it is; there is no adapter to merge"
            )
        raise ExportError(
            f"{run_dir}: no {ADAPTER_CONFIG}; not a finished LoRA run (is training still going?)"
        )
    if out_dir.resolve() == run_dir.resolve():
        raise ExportError("the merged model needs its own directory, not the run directory")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise ExportError(f"{out_dir} already holds files; choose another directory or pass --force")


def _torch_dtype(dtype: str):
    import torch

    return "auto" if check_dtype(dtype, ExportError) == "auto" else getattr(torch, dtype)


def merge_lora(
    run_dir: str | Path,
    out_dir: str | Path,
    dtype: str = "auto",
    overwrite: bool = False,
    trust_remote_code: bool = False,
) -> Path:
    """Merge the run's LoRA adapter into its base model and save the result to ``out_dir``; returns it.

    ``dtype=auto`` keeps the base model's stored dtype (bfloat16 for most current models).
    """
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    check_export(run_dir, out_dir, overwrite)
    torch_dtype = _torch_dtype(dtype)
    model = AutoPeftModelForCausalLM.from_pretrained(  # hub kernels off (transformers 5.2x's default is on)
        str(run_dir), dtype=torch_dtype, trust_remote_code=trust_remote_code, use_kernels=False
    )
    merged = model.merge_and_unload()
    merged.config.use_cache = True  # training switched the cache off; generation wants it
    tokenizer = AutoTokenizer.from_pretrained(str(run_dir), trust_remote_code=trust_remote_code)

    def write(folder: Path) -> None:
        merged.save_pretrained(str(folder), safe_serialization=True)
        tokenizer.save_pretrained(str(folder))
        for name in RUN_FILES:
            if (run_dir / name).is_file():
                shutil.copyfile(run_dir / name, folder / name)
        card = RunLayout(run_dir).model_card
        if card.is_file():
            (folder / MODEL_CARD).write_text(
                merged_card(card.read_text(encoding="utf-8"), run_dir), encoding="utf-8"
            )

    return write_dir_atomic(out_dir, write)


def merged_card(card: str, run_dir: Path) -> str:
    """The run's model card for the merged weights: a transformers model now, not a PEFT adapter."""
    card = card.replace("library_name: peft\n", "library_name: transformers\n", 1)
    card = card.replace("- lora\n", "- lora\n- merged\n", 1)
    card = card.replace(
        "the saved weights are an ordinary LoRA adapter for the base model",
        "these weights are the base model with the LoRA adapter merged in (symnoise export)",
    )
    return card
