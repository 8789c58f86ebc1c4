"""The views of one example: the symmetric pair ``X + eps`` / ``X - eps`` and several independent draws.

A training step runs each example as ``V`` views, each a ``View(draw, sign)``: the example's embeddings plus
``sign * eps_draw``. One-sided noise with ``draws=K`` is ``K`` views ``(k, +1)``; the symmetric pair is ``(0, +1)``,
``(0, -1)``; the pair with ``draws=K`` is ``K`` pairs, ``2K`` views (`views_of`). The loss is the mean over the views.

In ``concat`` execution one forward runs over the batch repeated once per view (`repeat_batch`, along the axis
`pair_axis` picks) and its per-token outputs are folded back to the caller's shape (`fold_pair_outputs`). In
``paired`` execution the loop runs one ordinary pass per view, each weighted ``1/V`` (`ExampleViews.passes`); the
``-eps`` pass of a pair reuses its ``+eps`` pass's draw. `ExampleViews` holds that state for one attachment.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Iterator
from dataclasses import dataclass
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


@dataclass(frozen=True)
class View:
    """One noisy view of an example: its embeddings plus ``sign * eps_draw``, ``draw`` counting the step's draws
    from 0."""

    draw: int
    sign: int


FIRST_VIEW = View(0, 1)


def views_of(draws: int, symmetric: bool) -> tuple[View, ...]:
    """The views of one example, in the order they run: for each draw, ``+eps`` (and ``-eps`` for the pair)."""
    signs = (1, -1) if symmetric else (1,)
    return tuple(View(draw, sign) for draw in range(draws) for sign in signs)


class ExampleViews:
    """The views' state for one attachment.

    ``views`` is every view of an example (`views_of`); ``current`` the view that the pass of ``paired`` execution
    now running computes (None outside `passes`); ``draw`` the ``(eps, scale)`` of the last ``+eps`` pass, which a
    pair's ``-eps`` pass reuses; ``copy_positions`` the token positions the views after the first added to what
    callers passed (the copies or extra passes): the extra work the hardware MFU counts. A Python int, so reading it
    costs no device sync.
    """

    def __init__(self, views: tuple[View, ...] = (FIRST_VIEW,)) -> None:
        self.views = views
        self.current: View | None = None
        self._index = 0
        self.draw: tuple[torch.Tensor, torch.Tensor] | None = None
        self.copy_positions = 0

    def passes(self) -> Iterator[float]:
        """The passes of ``paired`` execution, one per view in order, each weighing ``1/V``."""
        try:
            for index, view in enumerate(self.views):
                self.current, self._index = view, index
                yield 1 / len(self.views)
        finally:
            self.reset()

    def reset(self) -> None:
        """Forget the current pass and its draw."""
        self.current = None
        self._index = 0
        self.draw = None

    def current_view(self, positions: int) -> View:
        """The view of a ``paired`` forward of ``positions`` tokens; an error outside `passes`."""
        if self.current is None:
            # Each pass is an ordinary forward at one view: whoever computes the loss (the model from labels, or
            # the caller from the logits) computes it once per pass, so no labels are needed here.
            raise RuntimeError(
                f"symnoise: execution='paired' runs {len(self.views)} passes per batch, one per noisy view; "
                "drive them with `for _ in handle.paired_passes(): ...` (symnoise.hf does it for Trainer), "
                "or use execution='concat'"
            )
        if self._index:
            self.copy_positions += positions
        return self.current

    def reuse_draw(self, shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``+eps`` pass's ``(eps, scale)`` for the ``-eps`` pass, which must see the same batch."""
        if self.draw is None or self.draw[0].shape != shape:
            raise RuntimeError("symnoise: the -eps pass of a pair must see the same batch as its +eps pass")
        return self.draw

    def repeat(
        self, kwargs: dict, input_shape: torch.Size, labels: Any, attn_implementation: str
    ) -> tuple[int, int | None]:
        """Repeat a ``concat`` forward's inputs once per view, in place; returns the axis they were repeated along
        and, for logits kept at given positions along the sequence, how many positions each view keeps."""
        if labels is None:
            raise ValueError(
                f"symnoise: execution='concat' with {len(self.views)} noisy views per example (the symmetric pair "
                "or draws > 1) needs labels in the training forward so that the model computes the loss over "
                "every view; when the loss is computed outside the model (from the logits), use "
                "execution='paired' (symnoise.hf.add_noise picks it for such trainers), and wrap passes that only "
                "need logits (reference models, probes) in handle.noise_off()"
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
        repeat_batch(kwargs, along, len(self.views))
        self.copy_positions += (len(self.views) - 1) * input_shape.numel()
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
    """Along which axis the views (the symmetric pair, several draws) repeat a batch: 0, each copy is more rows;
    1, it extends the row.

    Only a FlashAttention kernel (``flash_attention_2/3``, hub kernels: transformers' test is "flash" in the name)
    that must infer packed sequences from position ids needs the copy in the same row, because transformers does
    that only for a one-row batch. Given all the varlen kwargs (``cu_seq_lens_q/k``, ``max_length_q/k``),
    FlashAttention runs over the flattened batch, where a second row is the same tokens in the same order. SDPA,
    eager and flex attention build a mask per row: the copy as a second row costs two ``T^2`` blocks instead of
    one ``(2T)^2`` mask (``V`` blocks instead of one ``(V T)^2`` for ``V`` views).
    """
    one_row_needed = (
        rows == 1 and packed_without_mask and "flash" in attn_implementation and not varlen_kwargs
    )
    return 1 if one_row_needed else 0


def repeat_batch(kwargs: dict, along: int, copies: int) -> None:
    """Repeat every per-token input of a forward call ``copies`` times in place: along the batch (0) or, for a
    packed padding-free row, along the sequence (1) so each copy becomes more packed sequences of the same row."""
    length = next(
        (v.shape[1] for k in BATCH_KEYS if isinstance(v := kwargs.get(k), torch.Tensor) and v.dim() > 1),
        None,
    )
    for key in BATCH_KEYS:
        value = kwargs.get(key)
        if key == "shift_labels" and isinstance(value, torch.Tensor) and value.dim() == 1:
            kwargs[key] = torch.cat([value] * copies)  # flattened targets of a logits_to_keep mask
        elif isinstance(value, torch.Tensor):
            if along == 1 and value.dim() != 2 and key != "inputs_embeds":
                raise ValueError(
                    f"symnoise: cannot repeat {key} of shape {tuple(value.shape)} in a packed row"
                )
            repeated = torch.cat([value] * copies, dim=along)
            if along == 1 and key == "labels":
                # A copy's first label would be predicted from the previous copy's last token; label 0 of a
                # sequence is never a causal-LM target, so masking it changes nothing else.
                repeated[:, value.shape[1] :: value.shape[1]] = IGNORE_INDEX
            kwargs[key] = repeated
    for key in CU_KEYS:
        cu = kwargs.get(key)
        if isinstance(cu, torch.Tensor):
            kwargs[key] = torch.cat([cu] + [cu[1:] + cu[-1] * copy for copy in range(1, copies)])
    if isinstance(kwargs.get("seq_idx"), torch.Tensor):
        seq_idx = kwargs["seq_idx"]
        step = seq_idx.max() + 1
        kwargs["seq_idx"] = torch.cat([seq_idx] + [seq_idx + step * c for c in range(1, copies)], dim=along)
    if kwargs.get("num_items_in_batch") is not None:
        kwargs["num_items_in_batch"] = kwargs["num_items_in_batch"] * copies
    if "logits_to_keep" in kwargs:
        kwargs["logits_to_keep"] = _repeat_logits_to_keep(kwargs["logits_to_keep"], along, length, copies)


def _repeat_logits_to_keep(keep: Any, along: int, length: int, copies: int) -> Any:
    """``logits_to_keep`` for a repeated batch: each copy keeps the same positions of its own rows, or, repeated
    along the sequence, of its part of the row (``length`` = the original row's length)."""
    if keep is None or isinstance(keep, int) and (keep == 0 or along == 0):
        return keep  # all positions, or the last ``keep`` of every row
    if not isinstance(keep, torch.Tensor):
        raise ValueError(f"symnoise: cannot repeat logits_to_keep={keep!r} along the sequence")
    if keep.dtype == torch.bool:  # a mask: flattened kept positions, each copy's after the one before
        return torch.cat([keep] * copies, dim=along)
    if along == 0:
        return keep if keep.dim() == 1 else torch.cat([keep] * copies)
    return torch.cat([keep + length * copy for copy in range(copies)], dim=keep.dim() - 1)


def _double_logits_to_keep(keep: Any, along: int, length: int) -> Any:
    """`_repeat_logits_to_keep` for the symmetric pair's two copies."""
    return _repeat_logits_to_keep(keep, along, length, 2)


def fold_pair_outputs(
    output: Any, along: int, input_shape: torch.Size, logits_length: int | None = None, views: int = 2
) -> Any:
    """Give a repeated forward's per-token outputs the caller's shape again (the loss already covers every view).

    ``logits``, masks and every boolean or integer tensor (TRL's ``is_top1`` hits) keep the first view (``X + eps``
    of the first draw), with their dtype. Floating per-token tensors (log-probabilities, entropies, as returned by
    TRL's fused LM head) become the mean over the ``views``, so a loss or a metric summed over them equals the mean
    over the views. Along the sequence (packed rows) a shifted field of length ``V T - 1`` is split around the
    boundary positions, whose targets are masked. Logits computed at ``logits_to_keep`` positions have
    ``logits_length`` positions per view along the sequence, or, for a mask, are flattened rows whose first
    ``1/V`` is the original's.
    """
    if not isinstance(output, dict):
        return None
    for key, value in list(output.items()):
        if key == "loss" or not isinstance(value, torch.Tensor) or value.dim() <= along:
            continue
        if key == "logits" and value.dim() == 2:
            output[key] = value[: value.shape[0] // views]
            continue
        n = logits_length if key == "logits" and logits_length is not None else input_shape[along]
        size = value.shape[along]
        if size == views * n:
            parts = [value.narrow(along, i * n, n) for i in range(views)]
        elif along == 1 and size == views * n - 1:
            parts = [value.narrow(along, i * n, n - 1) for i in range(views)]
        else:
            continue
        if key == "logits" or key.endswith("mask") or not value.is_floating_point():
            output[key] = parts[0]  # booleans and integers (top-1 hits, ids) are never averaged
        else:
            output[key] = functools.reduce(operator.add, parts) / views
    return output
