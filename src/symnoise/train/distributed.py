"""Multi-process training: checking the launch, the per-rank model placement, and the final save.

* `check_launch` fails early when the processes that were launched and the processes that train disagree
  (``accelerate launch --cpu --num_processes N`` starts one process; a world size the Trainer does not see would
  run N independent trainings into one run directory).
* `quantized_device_map` puts each rank's 4-bit (QLoRA) model on its own GPU, not all of them on ``cuda:0``.
* `final_state_dict` gathers the whole model on every rank: under FSDP (any state-dict type) and DeepSpeed ZeRO-3
  the gathering is a collective, so every rank must call it, and the main process then writes one consolidated
  safetensors model that ``from_pretrained`` loads.
* `leave_process_group` ends the process group before the interpreter exits: a gloo group still alive at exit
  aborts the process at random (SIGABRT, "terminate called without an active exception"; 9 of 30 two-process
  runs on a 2-core CPU), which turns a finished run into a failed launch. Destroying the group is not enough on
  its own: the finished Trainer is cyclic garbage whose DDP/FSDP wrapper still holds the group (and its gloo
  threads) until it is collected, which `symnoise.train.recipe.train` does before it returns (`release_memory`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from .reliability import TrainingError

logger = logging.getLogger("symnoise.train")


class LaunchError(TrainingError):
    """The processes were launched in a way that would not train as one distributed run."""


def world_size() -> int:
    """The number of processes the launcher started (1 without one)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Whether this is the global rank 0 process (or the only one)."""
    return int(os.environ.get("RANK", "0")) == 0


def leave_process_group() -> None:
    """Destroy the default process group if this process joined one (the Trainer's accelerator opens it).

    Purely local: no rank waits for another, so a rank still uploading to the hub or failing does not hold up
    the others. Called by ``symnoise train`` when it ends, however it ends; library callers who keep using the
    group after `train` returns are left alone.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _truthy(value: str | None) -> bool:
    return str(value).lower() in ("1", "true", "yes")


def check_launch(env: Mapping[str, str] = os.environ) -> None:
    """Refuse launches that would start fewer processes than asked, before anything is loaded.

    ``accelerate launch --cpu --num_processes N`` (N > 1) without an MPI host file runs the script once: accelerate
    sets ``MASTER_ADDR`` for the N processes it was asked for but starts only one, with no ``WORLD_SIZE``.
    """
    asked_for_several = _truthy(env.get("ACCELERATE_USE_CPU")) and "MASTER_ADDR" in env
    launched_one = not any(
        key in env
        for key in ("WORLD_SIZE", "LOCAL_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
    )
    if asked_for_several and launched_one:
        raise LaunchError(
            "accelerate launch --cpu --num_processes N starts a single process (accelerate runs several CPU "
            "processes only through mpirun), so this would not be a distributed run. For N processes on CPUs use "
            "`torchrun --nproc_per_node N -m symnoise train ...` or `accelerate launch --multi_gpu --num_processes "
            "N -m symnoise train ...` (on a machine without CUDA they train on the CPU over gloo); for one process "
            "leave out --num_processes (or unset MASTER_ADDR)"
        )


def check_world_size(trainer_world_size: int, env: Mapping[str, str] = os.environ) -> None:
    """The launcher's world size must be the one the Trainer trains with (else N independent runs collide)."""
    launched = int(env.get("WORLD_SIZE", "1"))
    if launched != trainer_world_size:
        raise LaunchError(
            f"{launched} processes were launched (WORLD_SIZE={launched}) but the Trainer sees a world size of "
            f"{trainer_world_size}: each process would train alone and write the same run directory. This happens "
            "when no backend fits the device (no CUDA: symnoise trains on the CPU over gloo); check the launcher "
            "and training.device"
        )


def describe_world(args: Any) -> str:
    """One line for the log: processes, backend and device, as the Trainer sees them."""
    state = getattr(args, "distributed_state", None)
    kind = str(getattr(state, "distributed_type", "NO")).split(".")[-1]
    backend = getattr(state, "backend", None) or "none"
    return (
        f"world size {args.world_size} (process {args.process_index}, local {args.local_process_index}; "
        f"{kind}, backend {backend}, device {args.device})"
    )


def quantized_device_map(local_rank: int) -> dict[str, int]:
    """``device_map`` for a 4-bit model: all of this rank's model on this rank's GPU."""
    return {"": local_rank}


def final_state_dict(trainer: Any) -> dict | None:
    """The full model state dict for the final save; EVERY rank must call this (it is a collective under FSDP and
    DeepSpeed ZeRO-3). Returns None where the model's own ``state_dict()`` is already whole (one process, DDP,
    ZeRO-1/2): ``Trainer._save`` reads it then.

    FSDP: accelerate gathers a full state dict (on the CPU, rank 0) whatever ``fsdp_state_dict_type`` the
    checkpoints use. ZeRO-3: the 16-bit gather, which needs ``zero3_save_16bit_model: true`` (as shipped).
    """
    if getattr(trainer, "is_fsdp_enabled", False):
        return trainer.accelerator.get_state_dict(trainer.model)
    if getattr(trainer, "is_deepspeed_enabled", False):
        stage = trainer.accelerator.deepspeed_config.get("zero_optimization", {}).get("stage")
        if stage == 3:
            try:
                return trainer.accelerator.get_state_dict(trainer.model_wrapped)
            except ValueError as error:
                raise TrainingError(
                    "DeepSpeed ZeRO-3 cannot write a consolidated final model without gathering the 16-bit weights: "
                    "set zero3_save_16bit_model: true in the accelerate config (stage3_gather_16bit_weights_on_"
                    f"model_save in a DeepSpeed JSON); the checkpoints are intact ({error})"
                ) from None
    return None


def deepspeed_checkpoint_state_dict(checkpoint: str | os.PathLike) -> dict:
    """The whole model's float32 weights in a DeepSpeed checkpoint folder (any ZeRO stage), read from its files by
    one process with DeepSpeed's own consolidator: no engine and no collective needed."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(checkpoint))


def keep_fsdp_on_cpu(env: Mapping[str, str] = os.environ) -> bool:
    """Make an FSDP launch (``ACCELERATE_USE_FSDP``) shard the model on CPU processes too; returns whether it did.

    accelerate turns FSDP on only for GPU-like process groups and silently runs DDP over gloo instead; the
    CPU run would then test another code path than the GPU run it stands for. PyTorch's FSDP2 (``fully_shard``)
    works over gloo on the CPU, so the shared accelerate state is given a distributed type for which FSDP is
    allowed (the device stays the CPU). Call after the distributed state exists, before the Trainer is made.
    """
    if not _truthy(env.get("ACCELERATE_USE_FSDP")):
        return False
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    state = PartialState()
    if state.distributed_type != DistributedType.MULTI_CPU:
        return False
    PartialState._shared_state["distributed_type"] = DistributedType.MULTI_GPU
    logger.info("FSDP on CPU processes (gloo): sharding the model as on GPUs")
    return True


def check_nonfinite_mode(on_nonfinite: str, env: Mapping[str, str] = os.environ) -> None:
    """``training.on_nonfinite: skip`` cannot work under DeepSpeed: DeepSpeed runs the optimizer step inside
    ``backward``, before the Trainer's pre-optimizer-step hook where a step is checked and dropped."""
    if on_nonfinite == "skip" and _truthy(env.get("ACCELERATE_USE_DEEPSPEED")):
        from .config import ConfigError

        raise ConfigError(
            "training.on_nonfinite=skip does not work under DeepSpeed, which steps the optimizer "
            "inside backward, before a step can be checked; use on_nonfinite: stop (the run stops at "
            "the first non-finite loss and the last checkpoint stays intact)"
        )
