"""The weight dtypes that `model.dtype`, `symnoise generate`, `symnoise analyze`, `symnoise export` and a grid's
decoding accept, and what ``auto`` means on a GPU."""

from __future__ import annotations

from collections.abc import Callable

DTYPES = ("auto", "float32", "bfloat16", "float16")


def check_dtype(dtype: str, error: Callable[[str], Exception] = ValueError) -> str:
    """``dtype`` when it is one of `DTYPES`; else ``error(message)`` naming the choices."""
    if dtype not in DTYPES:
        raise error(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return dtype


def gpu_supports_bf16() -> bool:
    """Whether the CUDA GPU computes in bfloat16 natively (compute capability 8.0 and later).

    ``torch.cuda.is_bf16_supported()`` also says True on older GPUs (T4, V100), where bfloat16 is emulated: slow
    for training, and refused by vLLM. So emulation does not count here.
    """
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)


def gpu_half_dtype() -> str:
    """``auto`` on a CUDA GPU: bfloat16 where the GPU computes in it natively, else float16."""
    return "bfloat16" if gpu_supports_bf16() else "float16"
