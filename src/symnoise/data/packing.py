"""Packing a batch of tokenised examples into a few rows of at most ``row_length`` tokens.

One flattened row per batch (transformers' ``DataCollatorWithFlattening``) is ideal for varlen attention kernels
(FlashAttention), which skip everything outside the block diagonal, and for FlexAttention, whose block mask
(built by transformers from the position ids) skips those blocks too. SDPA and eager attention build a dense mask
over the row instead, so their attention costs grow with the square of the row: a batch of 8 Alpaca examples
makes a row of about 2,000 tokens, and attention then costs more than the rest of a small model. Rows of at
most ``max_length`` tokens, balanced so that the batch has as few positions as possible, keep attention as cheap
as in padded batches while removing most of their padding.

Layout of a packed batch: ``input_ids``, ``labels`` and ``position_ids`` of shape ``(rows, width)`` and no
``attention_mask``; every sequence restarts its position ids at 0, which is how SDPA, eager and flex attention in
transformers keep attention inside each sequence (and how symnoise finds each sequence's length for its noise
scale). FlashAttention infers sequences from position ids only for a one-row batch, so the batch also carries the
varlen kwargs of the flattened rows (``cu_seq_lens_q/k``, ``max_length_q/k``, as transformers'
``DataCollatorWithFlattening(return_flash_attn_kwargs=True)`` gives them for one row): FlashAttention then runs
its varlen kernel over every sequence of every row, exactly, and without deriving them again in every layer; other
attention implementations ignore them. And ``use_cache=False``: with a KV cache transformers does not look for
packed sequences at all, so a model whose config enables the cache would attend across them. The first label of every
sequence is -100, so no sequence is trained to predict the first token of the next. A row shorter than the
widest is completed with a filler segment (pad token ids, labels -100, its own position ids from 0): it attends
only to itself and nothing attends to it, so it changes no loss and no gradient. Like any segment it receives
noise of the usual per-sequence norm (and counts in the logged mean noise norm), which it passes on to nothing.

`TrainedLogitsOnly` is the other batch transform here: it tells the model to compute logits only where a next
token is trained. `right_pad` is the plain padded batch, for the loops outside the Trainer (the quickstart's warm
start, the reference loss).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .tokenize import IGNORE_INDEX


def pack_rows(lengths: Sequence[int], row_length: int) -> list[list[int]]:
    """Indices of ``lengths`` grouped into rows whose total length is at most ``row_length``.

    First-fit decreasing: the longest sequences are placed first, each into the first row with room for it. No
    sequence is split; one longer than ``row_length`` is an error (the tokenizer truncates to ``max_length``).
    """
    if row_length < 1:
        raise ValueError(f"row_length must be >= 1, got {row_length}")
    rows: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        length = lengths[index]
        if length > row_length:
            raise ValueError(f"sequence {index} has {length} tokens, more than the row length {row_length}")
        for row, free in enumerate(room):
            if length <= free:
                rows[row].append(index)
                room[row] -= length
                break
        else:
            rows.append([index])
            room.append(row_length - length)
    return rows


def balanced_rows(lengths: Sequence[int], row_length: int) -> list[list[int]]:
    """Rows for one batch with the fewest token positions (rows x width of the widest), each at most ``row_length``.

    Packing a batch of 8 into rows of the full ``row_length`` often leaves one short last row, padded to the full
    width. So besides ``row_length``, every row count ``k`` from the fewest possible to one sequence per row is
    tried with capacity ``total / k`` (at least the longest sequence), and the packing with the smallest area wins
    (the earlier candidate on a tie). Capacity = the longest sequence is never worse than padding, so neither is
    the result.
    """
    if not lengths:
        return []
    longest, total = max(lengths), sum(lengths)
    best: tuple[int, list[list[int]]] | None = None
    capacities = [row_length] + [
        min(row_length, max(longest, math.ceil(total / count)))
        for count in range(max(1, math.ceil(total / row_length)), len(lengths) + 1)
    ]
    for capacity in capacities:
        rows = pack_rows(lengths, capacity)
        area = len(rows) * max(sum(lengths[i] for i in row) for row in rows)
        if best is None or area < best[0]:
            best = (area, rows)
    assert best is not None
    return best[1]


@dataclass
class PackedRowsCollator:
    """Collate tokenised examples (``input_ids``, ``labels``) into packed rows of at most ``row_length`` tokens.

    ``return_flash_attn_kwargs`` adds the varlen kwargs FlashAttention needs to keep the sequences of several rows
    apart (see the module docstring); turn it off only for a model whose forward does not accept them.
    """

    row_length: int
    pad_token_id: int
    return_flash_attn_kwargs: bool = True

    def __call__(self, features: Sequence[dict]) -> dict[str, Any]:
        lengths = [len(f["input_ids"]) for f in features]
        rows = balanced_rows(lengths, self.row_length)
        width = max(sum(lengths[i] for i in row) for row in rows)
        ids, labels, positions, segments = [], [], [], []
        for row in rows:
            row_ids: list[int] = []
            row_labels: list[int] = []
            row_positions: list[int] = []
            for index in row:
                feature = features[index]
                row_ids += list(feature["input_ids"])
                row_labels += [IGNORE_INDEX, *list(feature["labels"])[1:]]
                row_positions += range(lengths[index])
                segments.append(lengths[index])
            filler = width - len(row_ids)
            if filler:
                segments.append(filler)
            ids.append(row_ids + [self.pad_token_id] * filler)
            labels.append(row_labels + [IGNORE_INDEX] * filler)
            positions.append(row_positions + list(range(filler)))
        batch: dict[str, Any] = {
            "input_ids": torch.tensor(ids),
            "labels": torch.tensor(labels),
            "position_ids": torch.tensor(positions),
            "use_cache": False,
        }
        if self.return_flash_attn_kwargs:
            batch.update(flash_attn_kwargs(segments))
        return batch


def flash_attn_kwargs(segment_lengths: Sequence[int]) -> dict[str, Any]:
    """FlashAttention's varlen kwargs for sequences of ``segment_lengths`` laid end to end over the flattened
    batch (row after row): cumulative lengths ``[0, l1, l1 + l2, ...]`` as int32 tensors and the longest length as
    a Python int, as transformers' ``DataCollatorWithFlattening(return_flash_attn_kwargs=True)`` returns them."""
    cumulative = [0]
    for length in segment_lengths:
        cumulative.append(cumulative[-1] + length)
    cu_seq_lens = torch.tensor(cumulative, dtype=torch.int32)
    longest = max(segment_lengths, default=0)
    return {
        "cu_seq_lens_q": cu_seq_lens,
        "cu_seq_lens_k": cu_seq_lens.clone(),
        "max_length_q": longest,
        "max_length_k": longest,
    }


def real_token_count(batch: dict) -> torch.Tensor | int:
    """Real (non-padding) token positions of a collated batch, without a device sync.

    With an attention mask, its sum. Without one, a packed layout: every row ends with a sequence whose last
    label (its EOS) is trained, possibly followed by a filler with labels -100, so a row's real tokens are those
    up to its last trained label. Without labels either, every position counts.
    """
    mask = batch.get("attention_mask")
    if mask is not None:
        return mask.sum()
    labels = batch.get("labels")
    if labels is None or batch.get("position_ids") is None:
        return batch["input_ids"].numel()
    trained = labels != IGNORE_INDEX
    columns = torch.arange(1, labels.shape[1] + 1, device=labels.device)
    return (trained * columns).amax(dim=1).sum()


@dataclass
class TrainedLogitsOnly:
    """Wrap a collator so the model computes logits only where a next token is trained (the response).

    The loss covers response tokens only, yet a causal LM computes ``hidden @ lm_head`` for every position, prompt
    and padding included: for Alpaca-style data about half of them, and the head is a large share of a small or
    large-vocabulary model (Qwen, Gemma, Llama 3). This adds, per row, the positions whose shifted label is not
    -100 as ``logits_to_keep`` (``(rows, K)`` integer positions, K the most any row has; shorter rows repeat
    positions whose target is -100) and the matching ``shift_labels``; transformers' causal-LM loss then gives
    exactly the loss of the full logits. Computed on the host, so it costs no device sync. ``labels`` stay in
    the batch (token counts, ``num_items_in_batch``).
    """

    inner: Any

    def __call__(self, features: Sequence[dict]) -> dict[str, torch.Tensor]:
        batch = self.inner(features)
        labels = batch["labels"]
        shifted = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
        trained = shifted != IGNORE_INDEX
        width = max(int(trained.sum(dim=1).max()), 1)
        # Trained positions first, in order (a stable sort of "not trained"), then untrained ones as filler.
        positions = torch.argsort((~trained).to(torch.int8), dim=1, stable=True)[:, :width]
        batch["logits_to_keep"] = positions
        batch["shift_labels"] = shifted.gather(1, positions)
        return batch


def supports_trained_logits_only(model: Any) -> bool:
    """Whether ``model`` accepts ``(rows, K)`` integer ``logits_to_keep`` and a ``shift_labels`` loss argument.

    True for transformers causal LMs whose forward slices hidden states with ``slice_logits_to_keep`` (nearly all
    of them in transformers 5) when that helper takes per-row positions; checked on the helper itself.
    """
    import inspect

    try:
        from transformers.modeling_utils import slice_logits_to_keep
    except ImportError:
        return False
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT passes kwargs through
    forward = getattr(base, "forward", None)
    try:
        if forward is None or "logits_to_keep" not in inspect.signature(forward).parameters:
            return False
        hidden = torch.arange(12.0).reshape(2, 3, 2)
        kept = slice_logits_to_keep(hidden, torch.tensor([[2], [0]]))
    except (TypeError, ValueError, RuntimeError, IndexError):
        return False
    return tuple(kept.shape) == (2, 1, 2) and kept[0, 0, 0].item() == 4.0 and kept[1, 0, 0].item() == 6.0


def right_pad(
    items: Sequence[dict[str, list[int]]], pad_id: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``input_ids``, ``attention_mask`` and ``labels`` of tokenised examples padded on the right to the longest:
    ``pad_id`` in the ids, 0 in the mask, -100 in the labels."""
    width = max(len(item["input_ids"]) for item in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
    for row, item in enumerate(items):
        n = len(item["input_ids"])
        ids[row, :n] = torch.tensor(item["input_ids"])
        mask[row, :n] = 1
        labels[row, :n] = torch.tensor(item["labels"])
    return ids, mask, labels
