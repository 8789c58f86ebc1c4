"""The symmetric pair ``X + eps`` / ``X - eps``: what it does to a forward call and to the training loop.

In ``concat`` execution one forward runs over a doubled batch (`double_batch`, along the axis `pair_axis` picks)
and its per-token outputs are folded back to the caller's shape (`fold_pair_outputs`). In ``paired`` execution the
loop runs two ordinary passes that share one draw (`SymmetricPair.passes`). `SymmetricPair` holds the pair's
state for one attachment: the sign of the current pass, the ``+eps`` pass's draw and the positions the pair added.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

BATCH_KEYS = (
    "input_ids",
    "inputs_embeds",
    "attention_mask",
    "labels",
    "position_ids",
    "token_type_ids",
    "shift_labels",
)
CU_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k")
VARLEN_KEYS = (*CU_KEYS, "max_length_q", "max_length_k")
IGNORE_INDEX = -100  # transformers' label of a position without a target (as symnoise.data writes it)


class SymmetricPair:
    """The pair's state for one attachment.

    ``sign`` is the pass of ``paired`` execution now running (+1, -1; None outside `passes`), ``draw`` the
    ``(eps, scale)`` of its ``+eps`` pass, which the ``-eps`` pass reuses, and ``copy_positions`` the token
    positions the pair added to what callers passed (the ``X - eps`` copy or pass): the extra work the hardware MFU
    counts. A Python int, so reading it costs no device sync.
    """

    def __init__(self) -> None:
        self.sign: int | None = None
        self.draw: tuple[torch.Tensor, torch.Tensor] | None = None
        self.copy_positions = 0

    def passes(self) -> Iterator[float]:
        """The two passes of ``paired`` execution, ``+eps`` then ``-eps``, each weighing 1/2."""
        try:
            for sign in (1, -1):
                self.sign = sign
                yield 0.5
        finally:
            self.reset()

    def reset(self) -> None:
        """Forget the current pass and its draw."""
        self.sign = None
        self.draw = None

    def current_sign(self, positions: int) -> int:
        """The sign of a ``paired`` forward of ``positions`` tokens; an error outside `passes`."""
        if self.sign is None:
            # Each pass is an ordinary forward at X + eps or X - eps: whoever computes the loss (the model from
            # labels, or the caller from the logits) computes it once per pass, so no labels are needed here.
            raise RuntimeError(
                "symnoise: execution='paired' runs two passes per batch; drive them with "
                "`for _ in handle.paired_passes(): ...` (symnoise.hf does it for Trainer), "
                "or use execution='concat'"
            )
        if self.sign == -1:
            self.copy_positions += positions
        return self.sign

    def reuse_draw(self, shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``+eps`` pass's ``(eps, scale)`` for the ``-eps`` pass, which must see the same batch."""
        if self.draw is None or self.draw[0].shape != shape:
            raise RuntimeError("symnoise: the -eps pass of a pair must see the same batch as its +eps pass")
        return self.draw

    def double(
        self, kwargs: dict, input_shape: torch.Size, labels: Any, attn_implementation: str
    ) -> tuple[int, int | None]:
        """Double a ``concat`` forward's inputs in place; returns the axis they were doubled along and, for logits
        kept at given positions along the sequence, how many positions each half keeps."""
        if labels is None:
            raise ValueError(
                "symnoise: the symmetric pair in execution='concat' needs labels in the training forward so that "
                "the model computes the loss over both X + eps and X - eps; when the loss is computed outside the "
                "model (from the logits), use execution='paired' (symnoise.hf.add_noise picks it for such "
                "trainers), and wrap passes that only need logits (reference models, probes) in handle.noise_off()"
            )
        along = pair_axis(
            input_shape[0],
            packed_without_mask(kwargs),
            attn_implementation,
            all(kwargs.get(key) is not None for key in VARLEN_KEYS),
        )
        keep = kwargs.get("logits_to_keep")
        logits_length = None
        if along == 1 and isinstance(keep, torch.Tensor) and keep.dtype != torch.bool:
            logits_length = keep.shape[-1]
        double_batch(kwargs, along)
        self.copy_positions += input_shape.numel()
        return along, logits_length


def packed_without_mask(kwargs: dict) -> bool:
    """Whether a forward's inputs are packed sequences told apart only by position ids or ``cu_seq_lens``.

    transformers looks for such sequences only when no KV cache is in use: with one (a model whose config
    enables it, ``TrainingArguments(use_cache=True)``), every packed sequence would attend to the ones before it.
    """
    return kwargs.get("attention_mask") is None and (
        kwargs.get("position_ids") is not None or kwargs.get("cu_seq_lens_q") is not None
    )


def pair_axis(rows: int, packed_without_mask: bool, attn_implementation: str, varlen_kwargs: bool) -> int:
    """Along which axis the symmetric pair doubles a batch: 0, the copy is more rows; 1, it extends the row.

    Only a FlashAttention kernel (``flash_attention_2/3``, hub kernels: transformers' test is "flash" in the name)
    that must infer packed sequences from position ids needs the copy in the same row, because transformers does
    that only for a one-row batch. Given all the varlen kwargs (``cu_seq_lens_q/k``, ``max_length_q/k``),
    FlashAttention runs over the flattened batch, where a second row is the same tokens in the same order. SDPA,
    eager and flex attention build a mask per row: the copy as a second row costs two ``T^2`` blocks instead of
    one ``(2T)^2`` mask.
    """
    one_row_needed = (
        rows == 1 and packed_without_mask and "flash" in attn_implementation and not varlen_kwargs
    )
    return 1 if one_row_needed else 0


def double_batch(kwargs: dict, along: int) -> None:
    """Duplicate every per-token input of a forward call in place: along the batch (0) or, for a packed
    padding-free row, along the sequence (1) so the copy becomes more packed sequences of the same row."""
    length = next(
        (v.shape[1] for k in BATCH_KEYS if isinstance(v := kwargs.get(k), torch.Tensor) and v.dim() > 1),
        None,
    )
    for key in BATCH_KEYS:
        value = kwargs.get(key)
        if key == "shift_labels" and isinstance(value, torch.Tensor) and value.dim() == 1:
            kwargs[key] = torch.cat([value, value])  # flattened targets of a logits_to_keep mask
        elif isinstance(value, torch.Tensor):
            if along == 1 and value.dim() != 2 and key != "inputs_embeds":
                raise ValueError(
                    f"symnoise: cannot double {key} of shape {tuple(value.shape)} in a packed row"
                )
            doubled = torch.cat([value, value], dim=along)
            if along == 1 and key == "labels":
                # The copy's first label would be predicted from the original's last token; label 0 of a
                # sequence is never a causal-LM target, so masking it changes nothing else.
                doubled[:, value.shape[1]] = IGNORE_INDEX
            kwargs[key] = doubled
    for key in CU_KEYS:
        cu = kwargs.get(key)
        if isinstance(cu, torch.Tensor):
            kwargs[key] = torch.cat([cu, cu[1:] + cu[-1]])
    if isinstance(kwargs.get("seq_idx"), torch.Tensor):
        seq_idx = kwargs["seq_idx"]
        kwargs["seq_idx"] = torch.cat([seq_idx, seq_idx + seq_idx.max() + 1], dim=along)
    if kwargs.get("num_items_in_batch") is not None:
        kwargs["num_items_in_batch"] = kwargs["num_items_in_batch"] * 2
    if "logits_to_keep" in kwargs:
        kwargs["logits_to_keep"] = _double_logits_to_keep(kwargs["logits_to_keep"], along, length)


def _double_logits_to_keep(keep: Any, along: int, length: int) -> Any:
    """``logits_to_keep`` for a doubled batch: the copy keeps the same positions of its own rows, or, doubled
    along the sequence, of its half of the row (``length`` = the original row's length)."""
    if keep is None or isinstance(keep, int) and (keep == 0 or along == 0):
        return keep  # all positions, or the last ``keep`` of every row
    if not isinstance(keep, torch.Tensor):
        raise ValueError(f"symnoise: cannot double logits_to_keep={keep!r} along the sequence")
    if keep.dtype == torch.bool:  # a mask: flattened kept positions, the copy's after the original's
        return torch.cat([keep, keep], dim=along)
    if along == 0:
        return keep if keep.dim() == 1 else torch.cat([keep, keep])
    return torch.cat([keep, keep + length], dim=keep.dim() - 1)


def fold_pair_outputs(
    output: Any, along: int, input_shape: torch.Size, logits_length: int | None = None
) -> Any:
    """Give a doubled forward's per-token outputs the caller's shape again (the loss already covers both halves).

    ``logits``, masks and every boolean or integer tensor (TRL's ``is_top1`` hits) keep the ``X + eps`` half, with
    their dtype. Floating per-token tensors (log-probabilities, entropies, as returned by TRL's fused LM head)
    become the mean of the two halves, so a loss or a metric summed over them equals the mean over the pair.
    Along the sequence (packed rows) a shifted field of length ``2T - 1`` is split around the boundary position,
    whose target is masked. Logits computed at ``logits_to_keep`` positions have ``logits_length`` positions per
    half along the sequence, or, for a mask, are flattened rows whose first half is the original's.
    """
    if not isinstance(output, dict):
        return None
    for key, value in list(output.items()):
        if key == "loss" or not isinstance(value, torch.Tensor) or value.dim() <= along:
            continue
        if key == "logits" and value.dim() == 2:
            output[key] = value[: value.shape[0] // 2]
            continue
        n = logits_length if key == "logits" and logits_length is not None else input_shape[along]
        size = value.shape[along]
        if size == 2 * n:
            first, second = value.narrow(along, 0, n), value.narrow(along, n, n)
        elif along == 1 and size == 2 * n - 1:
            first, second = value.narrow(along, 0, n - 1), value.narrow(along, n, n - 1)
        else:
            continue
        if key == "logits" or key.endswith("mask") or not value.is_floating_point():
            output[key] = first  # booleans and integers (top-1 hits, ids) are never averaged
        else:
            output[key] = (first + second) / 2
    return output
