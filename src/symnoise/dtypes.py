"""The weight dtypes that `symnoise generate` and `symnoise export` accept, and what ``auto`` means on a GPU."""

from __future__ import annotations

from collections.abc import Callable

DTYPES = ("auto", "float32", "bfloat16", "float16")


def check_dtype(dtype: str, error: Callable[[str], Exception] = ValueError) -> str:
    """``dtype`` when it is one of `DTYPES`; else ``error(message)`` naming the choices."""
    if dtype not in DTYPES:
        raise error(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return dtype


def gpu_half_dtype() -> str:
    """``auto`` on a CUDA GPU: bfloat16 where the GPU supports it, else float16."""
    import torch

    return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
