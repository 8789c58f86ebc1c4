"""Checks made before anything expensive: each turns a late traceback into a `ConfigError` naming the field.

Without them a run can load a 7B model (or train for hours) before it finds that wandb is not installed, that
flash-attn cannot be imported, that a LoRA target module does not exist, or that the hub cannot be reached.
Every check here reads only small files (a model's ``config.json``, a tokenizer) or the environment:

* `check_output_dir`: ``training.output_dir`` is not under a file and its nearest existing folder is writable.
* `check_environment`: packages that the config asks for are importable (wandb, tensorboard, flash-attn, kernels),
  and the attention implementation can train on this machine (FlashAttention and FlexAttention need CUDA).
* `check_model_source`: ``model.name`` is a directory holding a saved model, or a hub name that can be fetched
  (cached, or the hub answers within seconds; ``HF_HUB_OFFLINE`` is honoured and named).
* `check_lora_targets`: every ``lora.target_modules`` name matches a module of the model, found on a model
  built on the meta device from its config (no weights are read).
* `check_chat_template`: ``data.template: chat`` has a tokenizer with a chat template.
"""

from __future__ import annotations

import errno
import importlib.metadata
import importlib.util
import logging
import os
from pathlib import Path

from .. import offline
from ..files import make_dirs
from .config import ConfigError, TrainConfig, is_hub_kernel

logger = logging.getLogger("symnoise.train")

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


# ------------------------------------------------------------------------------------------ output directory
def check_output_dir(output_dir: str | Path) -> None:
    """``output_dir`` must be a directory or creatable as one, in a folder this process can write."""
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"training.output_dir: {path} exists and is not a directory")
    ancestor = path
    while not ancestor.exists():
        if ancestor.parent == ancestor:
            break
        ancestor = ancestor.parent
    if ancestor.exists() and not ancestor.is_dir():
        raise ConfigError(
            f"training.output_dir: {path} cannot be created: {ancestor} is a file, not a folder"
        )
    if path.is_dir():
        return  # the write probe after the directory is locked tells whether it is writable
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(f"training.output_dir: {path} cannot be created: {ancestor} is not writable")


def make_output_dir(path: Path) -> list[Path]:
    """Create the run directory (and its parents), turning an OS refusal into a `ConfigError`; returns the
    folders it created (`symnoise.files.make_dirs`), which a run that fails before training removes again."""
    try:
        return make_dirs(path)
    except OSError as error:
        raise ConfigError(f"training.output_dir: cannot create {path} ({error.strerror or error})") from None


def probe_writable(path: Path) -> None:
    """Write and remove a small file in ``path``; a read-only mount or folder fails here, not at the first save."""
    probe = path / f".write_test_{os.getpid()}"
    try:
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        reason = "read-only file system" if error.errno == errno.EROFS else (error.strerror or str(error))
        raise ConfigError(f"training.output_dir: cannot write to {path} ({reason})") from None


# ------------------------------------------------------------------------------------------ packages
def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _distribution_installed(name: str) -> bool:
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


# What each FlashAttention implementation needs installed, and how to tell it is. FlashAttention 4 installs as the
# flash_attn.cute module of the distribution flash-attn-4 (transformers' own test): flash-attn 2 ships a cute folder
# too, so only the distribution tells them apart.
FLASH_ATTENTION_PACKAGES = {
    "flash_attention_2": ("flash-attn", lambda: _importable("flash_attn")),
    "flash_attention_3": ("flash-attn 3 (flash_attn_interface)", lambda: _importable("flash_attn_interface")),
    "flash_attention_4": ("flash-attn-4 (flash_attn.cute)", lambda: _distribution_installed("flash-attn-4")),
}


def check_environment(config: TrainConfig) -> None:
    """Packages the config needs are installed, and the attention implementation has what it needs to train."""
    for target in config.training.report_to:
        if target == "wandb" and not _importable("wandb"):
            raise ConfigError(
                'training.report_to: wandb is not installed (pip install "symnoise[wandb]"); install it or '
                "remove wandb from training.report_to"
            )
        if target == "tensorboard" and not (_importable("tensorboard") or _importable("tensorboardX")):
            raise ConfigError(
                "training.report_to: tensorboard is not installed (pip install tensorboard); "
                "install it or remove tensorboard from training.report_to"
            )
    if config.model.use_kernels and not _importable("kernels"):
        raise ConfigError(
            "model.use_kernels: true needs the kernels package (pip install kernels), which is not installed; "
            "install it or leave model.use_kernels off (the default)"
        )
    check_attention(config)


def check_attention(config: TrainConfig) -> None:
    """``model.attn_implementation`` has its package, and a CUDA GPU where it cannot train without one."""
    attention = config.model.attn_implementation
    if attention is None:
        return
    import torch

    on_cpu = config.training.device == "cpu" or not torch.cuda.is_available()
    if is_hub_kernel(attention) and not _importable("kernels"):
        raise ConfigError(
            f"model.attn_implementation={attention} is a hub kernel: it needs the kernels package "
            "(pip install kernels), which is not installed; install it or use sdpa (the default)"
        )
    if attention == "flex_attention" and on_cpu and not _flex_attention_trains_on_cpu():
        raise ConfigError(
            f"model.attn_implementation=flex_attention cannot train on the CPU: torch {torch.__version__} has "
            "no FlexAttention backward pass there; use sdpa or eager on CPU"
        )
    if attention in FLASH_ATTENTION_PACKAGES:
        package, installed = FLASH_ATTENTION_PACKAGES[attention]
        if not installed():
            raise ConfigError(
                f"model.attn_implementation={attention} needs {package}, which is not installed; "
                "install it or use sdpa (the default)"
            )
        if on_cpu:
            raise ConfigError(
                f"model.attn_implementation={attention} needs a CUDA GPU; use sdpa or eager on CPU"
            )


def _flex_attention_trains_on_cpu() -> bool:
    """Whether this torch runs FlexAttention's backward pass on the CPU (2.13 does not: NotImplementedError).

    Asked of torch itself, on a 16-token attention, so that a torch that learns it is not refused."""
    import warnings

    import torch
    from torch.nn.attention.flex_attention import flex_attention

    query = torch.zeros(1, 1, 16, 8, requires_grad=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # uncompiled FlexAttention warns that it is slow
            flex_attention(query, query, query).sum().backward()
    except NotImplementedError:
        return False
    return True


# ------------------------------------------------------------------------------------------ model
def check_model_source(config: TrainConfig) -> None:
    """``model.name`` is a folder with a saved model, or a hub name this machine can get (cached or online)."""
    name = config.model.name
    local = Path(name).expanduser()
    if local.exists():
        if not local.is_dir():
            raise ConfigError(
                f"model.name: {local} is a file; give a model folder (config.json and weights) or a hub name"
            )
        files = {p.name for p in local.iterdir()}
        if not files:
            raise ConfigError(
                f"model.name: {local} is an empty folder; it must hold a saved model (config.json "
                "and *.safetensors, as written by save_pretrained)"
            )
        if "config.json" not in files and "adapter_config.json" not in files:
            raise ConfigError(
                f"model.name: {local} has no config.json, so it is not a saved model (it holds "
                f"{', '.join(sorted(files)[:5])}{', ...' if len(files) > 5 else ''})"
            )
        if not any(f.endswith(WEIGHT_SUFFIXES) for f in files):
            raise ConfigError(
                f"model.name: {local} has a config.json but no weights (*.safetensors or *.bin)"
            )
        return
    problem = offline.model_unavailable(name, config.model.revision)
    if problem is not None:
        raise ConfigError(problem)


def model_module_names(config: TrainConfig) -> list[str]:
    """Dotted names of every module of the configured model, built on the meta device (no weights read)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    model_config = AutoConfig.from_pretrained(
        config.model.name, revision=config.model.revision, trust_remote_code=config.model.trust_remote_code
    )
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(
            model_config, trust_remote_code=config.model.trust_remote_code
        )
    return [name for name, _ in model.named_modules() if name]


def check_lora_targets(config: TrainConfig) -> None:
    """Every name in ``lora.target_modules`` matches a module as PEFT matches them (the name or its last parts)."""
    targets = config.lora.target_modules
    if not config.lora.enabled or targets == "all-linear":
        return
    local = Path(config.model.name).expanduser()
    if local.is_dir() and (local / "adapter_config.json").is_file() and not (local / "config.json").is_file():
        return  # an adapter folder: its base model's modules are not known without loading it
    names = model_module_names(config)
    missing = [t for t in targets if not any(n == t or n.endswith(f".{t}") for n in names)]
    if missing:
        last_parts = sorted({n.rsplit(".", 1)[-1] for n in names if not n.rsplit(".", 1)[-1].isdigit()})
        raise ConfigError(
            f"lora.target_modules: {', '.join(missing)} not found in {config.model.name}; its "
            f"modules are named {', '.join(last_parts)} (or use all-linear)"
        )


def check_chat_template(config: TrainConfig, tokenizer, template: str) -> None:
    """``template: chat`` renders prompts with the tokenizer's chat template, which it must have."""
    if template == "chat" and not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            f"data.template=chat: the tokenizer of {config.model.name} has no chat template; use "
            "data.template=alpaca or vicuna, or a model whose tokenizer defines chat_template"
        )


def check_before_data(config: TrainConfig) -> None:
    """What is known from the config and the environment alone (run before the data is read)."""
    check_environment(config)
    name = config.model.name
    if Path(name).expanduser().exists() or name.startswith((".", "/", "~")) or offline.path_like_parent(name):
        check_model_source(config)


def check_before_model(config: TrainConfig) -> None:
    """What needs the model's name resolved or its config read (run after the data is read, before loading)."""
    check_model_source(config)
    check_lora_targets(config)
