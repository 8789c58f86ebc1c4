"""The noise itself: small pure functions, tensors in and tensors out, with explicit lengths and generator.

Per token ``t`` of a sequence with ``L`` noised tokens, embedding width ``d`` and base scale ``alpha``::

    noise[t] = alpha / sqrt(L * d) * c * u[t],     u[t] ~ U(-1, 1)^d | N(0, 1)^d | {-1, +1}^d

with ``c = 1`` for the uniform distribution and ``c = 1/sqrt(3)`` for Gaussian and Bernoulli when their norm
is matched to NEFTune's, so that ``E||noise||^2 = alpha^2 / 3`` per sequence for every method.

Lengths are carried per token (``token_lengths[b, t]`` = length of the sequence that token belongs to, 0 for
tokens that get no noise), which covers padding, packed rows and prompt/response regions with one formula and
needs no host-device synchronisation.
"""

from __future__ import annotations

import math

import torch

DISTRIBUTIONS = ("uniform", "gaussian", "bernoulli")
_UNIFORM_SECOND_MOMENT = 1.0 / 3.0  # E[u^2] for u ~ U(-1, 1); Gaussian and Bernoulli have 1.


@torch.compiler.disable  # dynamo cannot trace a draw from an explicit torch.Generator: one break, here only
def sample_unit_noise(
    shape: tuple[int, ...] | torch.Size,
    distribution: str,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Draw unscaled noise: U(-1, 1), N(0, 1) or Rademacher (+-1 with p = 1/2), in ``dtype`` on ``device``."""
    if distribution == "uniform":
        return torch.empty(shape, dtype=dtype, device=device).uniform_(-1.0, 1.0, generator=generator)
    if distribution == "gaussian":
        return torch.empty(shape, dtype=dtype, device=device).normal_(0.0, 1.0, generator=generator)
    if distribution == "bernoulli":
        # Thresholding a float32 uniform at 1/2 gives p = 1/2 exactly (its 24 random bits split evenly) and is
        # faster on CPU than bernoulli_; drawing in float32 avoids rounding bias in low-precision dtypes.
        u = torch.empty(shape, dtype=torch.float32, device=device).uniform_(0.0, 1.0, generator=generator)
        return torch.where(u >= 0.5, 1.0, -1.0).to(dtype)
    raise ValueError(f"unknown noise distribution {distribution!r}; choose one of {', '.join(DISTRIBUTIONS)}")


def distribution_factor(distribution: str, match_uniform_norm: bool) -> float:
    """``c`` in the formula: 1/sqrt(3) for norm-matched Gaussian and Bernoulli noise, else 1."""
    if distribution == "uniform" or not match_uniform_norm:
        return 1.0
    return 1.0 / math.sqrt(3.0)


def expected_squared_norm(alpha: float, distribution: str, match_uniform_norm: bool = True) -> float:
    """Expected squared L2 norm of one sequence's whole noise (reference table): alpha^2/3, or alpha^2 unmatched."""
    second_moment = _UNIFORM_SECOND_MOMENT if distribution == "uniform" else 1.0
    return alpha**2 * second_moment * distribution_factor(distribution, match_uniform_norm) ** 2


def segment_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """Index of the packed sequence each token belongs to, per row: a new sequence starts wherever the
    position ids do not continue the previous token's (a reset to 0 in padding-free batches)."""
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
    return starts.long().cumsum(dim=1) - 1


def position_ids_from_cu_seqlens(cu_seqlens: torch.Tensor, total_tokens: int) -> torch.Tensor:
    """Rebuild flattened position ids ``(1, total)`` from cumulative sequence lengths ``[0, l1, l1+l2, ...]``."""
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    starts = torch.repeat_interleave(cu_seqlens[:-1], lengths, output_size=total_tokens)
    return (torch.arange(total_tokens, device=cu_seqlens.device) - starts).unsqueeze(0)


def token_lengths(noise_mask: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """For each token, the number of noised tokens in its sequence; 0 where ``noise_mask`` is false.

    Args:
        noise_mask: ``(B, T)`` bool, the tokens that get noise (real tokens, optionally one region only).
        position_ids: ``(B, T)`` when rows hold several packed sequences; ``None`` means one sequence per row.
    """
    batch, seq = noise_mask.shape
    counts = noise_mask.to(torch.float32)
    if position_ids is None:
        return counts.sum(dim=1, keepdim=True).expand(batch, seq) * counts
    flat = segment_ids(position_ids) + torch.arange(batch, device=noise_mask.device).unsqueeze(1) * seq
    per_segment = torch.zeros(batch * seq, device=noise_mask.device).index_add_(
        0, flat.flatten(), counts.flatten()
    )
    return per_segment[flat] * counts


def noise_scale(token_lengths: torch.Tensor, dim: int, alpha: float, factor: float = 1.0) -> torch.Tensor:
    """Per-token scale ``alpha * factor / sqrt(L * d)`` as ``(..., 1)`` float32; exactly 0 where ``L`` is 0."""
    inv = torch.rsqrt(token_lengths.clamp(min=1.0) * float(dim))
    return torch.where(token_lengths > 0, inv * (alpha * factor), 0.0).unsqueeze(-1)


def scheduled_alpha(alpha: float, floor: float, schedule: str, progress: float) -> float:
    """alpha at training progress ``progress`` in [0, 1]: constant, or linear / cosine decay to ``floor``."""
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "constant":
        return alpha
    if schedule == "linear":
        return floor + (alpha - floor) * (1.0 - progress)
    if schedule == "cosine":
        return floor + (alpha - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {schedule!r}; choose constant, linear or cosine")


def token_squared_norms(noise: torch.Tensor) -> torch.Tensor:
    """Squared L2 norm of each token's noise, ``(B, T)`` float32: all that the sequence norms need of the
    ``(B, T, d)`` noise, so a caller can keep this instead of the noise."""
    return torch.linalg.vector_norm(noise.detach(), dim=-1, dtype=torch.float32).square()


def sequence_noise_norms(
    noise: torch.Tensor, token_lengths: torch.Tensor, position_ids: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """L2 norm of the whole noise of each sequence, and which sequences got noise at all.

    Returns fixed-shape tensors (no data-dependent shapes, so no device sync): ``norms`` and a bool ``valid``,
    per row, or per packed segment slot (``B * T`` slots) when ``position_ids`` is given.
    """
    return sequence_norms_from_token_squares(token_squared_norms(noise), token_lengths, position_ids)


def sequence_norms_from_token_squares(
    token_sq: torch.Tensor, token_lengths: torch.Tensor, position_ids: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`sequence_noise_norms` from the tokens' squared norms (`token_squared_norms`)."""
    noised = (token_lengths > 0).float()
    if position_ids is None:
        return token_sq.sum(dim=1).sqrt(), noised.sum(dim=1) > 0
    batch, seq = token_sq.shape
    device = token_sq.device
    flat = (segment_ids(position_ids) + torch.arange(batch, device=device).unsqueeze(1) * seq).flatten()
    per_seq = torch.zeros(batch * seq, device=device).index_add_(0, flat, token_sq.flatten())
    valid = torch.zeros(batch * seq, device=device).index_add_(0, flat, noised.flatten()) > 0
    return per_seq.sqrt(), valid


def mean_noise_norm(
    noise: torch.Tensor, token_lengths: torch.Tensor, position_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean per-sequence noise norm as a 0-d tensor (0 when nothing was noised), computed without a sync."""
    return mean_norm_from_token_squares(token_squared_norms(noise), token_lengths, position_ids)


def mean_norm_from_token_squares(
    token_sq: torch.Tensor, token_lengths: torch.Tensor, position_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """`mean_noise_norm` from the tokens' squared norms (`token_squared_norms`)."""
    norms, valid = sequence_norms_from_token_squares(token_sq, token_lengths, position_ids)
    return (norms * valid).sum() / valid.sum().clamp(min=1)
